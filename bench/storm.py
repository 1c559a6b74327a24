"""The `storm` scenario's parts outside the load generator: the backlog a restarted relay
finds in its store, when each device comes back, and a load balancer's health probes
meanwhile.

Invariant: the backlog is written through the relay's own SqliteStore (bench/prefill.py), so
the relay started on it is in exactly the state of a relay restarted with that many
undelivered messages.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.prefill import now_stamp, store_messages
from bench.searcher import percentile
from relay.client.backoff import ReconnectPolicy
from relay.store.base import NewMessage, direct_conversation

#: the user every backlog message comes from (never connected during the storm)
SENDER = "storm-sender"


def prefill(db: Path, users: list[str], per_user: int, text_bytes: int) -> int:
    """Store `per_user` messages from SENDER to each of `users`; returns how many."""
    return store_messages(db, _backlog(users, per_user, text_bytes))


def _backlog(users: list[str], per_user: int, text_bytes: int) -> Iterator[NewMessage]:
    stamp = now_stamp()
    text = "x" * text_bytes
    for k, user in enumerate(users):
        conversation = direct_conversation(SENDER, user)
        for j in range(per_user):
            # ids in the load generator's "<ns>.<counter>" form: it parses every id
            yield NewMessage(
                conversation=conversation,
                id=f"{k}.{j}",
                sender_id=SENDER,
                text=text,
                server_timestamp=stamp,
                recipient_id=user,
            )


def uniform_schedule(n: int, spread_s: float, seed: int = 1) -> list[float]:
    """Every device back within `spread_s` seconds, uniformly (a restart behind a load
    balancer that spreads reconnects)."""
    rng = random.Random(seed)
    return sorted(rng.uniform(0.0, spread_s) for _ in range(n))


def client_default_schedule(n: int, seed: int = 1) -> list[float]:
    """When n devices running the client library with its default ReconnectPolicy attempt
    their first reconnect after the relay dropped them all at once, from the first attempt."""
    rng = random.Random(seed)
    policy = ReconnectPolicy()
    times = sorted(policy.delay_before(1, rng) for _ in range(n))
    return [t - times[0] for t in times]


#: how often the prober asks, and how long it waits for an answer (a load balancer's
#: usual probe timeout)
PROBE_EVERY = 0.1
PROBE_TIMEOUT = 5.0


class HealthProber:
    """GET /healthz every PROBE_EVERY seconds on a new connection, as a load balancer does,
    while the storm runs (a thread of the bench's own process). `finish()` says how long the
    answers took and how many never came within PROBE_TIMEOUT."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._took_ms: list[float] = []
        self._failed = 0
        self._first_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="healthz-prober", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # the first probe at once: a storm's worst moment is its start
        self._probe()
        while not self._stop.wait(PROBE_EVERY):
            self._probe()

    def _probe(self) -> None:
        start = time.perf_counter()
        try:
            with socket.create_connection(("127.0.0.1", self._port), timeout=PROBE_TIMEOUT) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n")
                answer = b""
                while chunk := sock.recv(4096):
                    answer += chunk
            if not answer.startswith(b"HTTP/1.1 200"):
                raise OSError(f"answered {answer[:40]!r}")
        except OSError as exc:
            self._failed += 1
            self._first_error = self._first_error or repr(exc)
            return
        self._took_ms.append((time.perf_counter() - start) * 1000)

    def answered(self) -> int:
        return len(self._took_ms)

    def failures(self) -> int:
        return self._failed

    def finish(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join()
        took = sorted(self._took_ms)
        return {
            "probes": len(took) + self._failed,
            "failed": self._failed,
            "first_error": self._first_error,
            "p99_ms": percentile(took, 0.99),
            "max_ms": percentile(took, 1.0),
        }
