"""The `search` scenario's parts outside the load generator: the stored corpus the relay
starts on, the wait for its search index, and the concurrent search client's process.

The corpus: `messages` texts of 4-14 words drawn from a Zipf-like word list (Latin with and
without accents, Cyrillic, CJK runs), so queries have common words with many matches and rare
ones with few. Every message is sent by one of the searching users to one of their partners
(a direct conversation), so each searcher's own conversations hold matches, and no searcher
has a backlog of undelivered messages to receive on connecting (their own messages).
The partners never connect.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from bench.prefill import now_stamp, store_messages
from relay.store.base import NewMessage, direct_conversation

_WORD_LIST = (
    "the and you to see tomorrow meeting run café today time coffee work after "
    "please thanks lunch call project send file later week morning evening train "
    "привет завтра встреча кофе работа вечером спасибо "
    "東京 会議 明日 天気 "
    "résumé naïve déjà vu crème brûlée straße über señor año façade garçon "
    "ёжик москва письмо поезд "
    "running runway runner release review budget draft deadline weekend holiday "
    "birthday dinner movie ticket airport hotel bicycle garden kitchen window "
    "東京都に 大阪 新幹線 会議室 "
    "piñata smörgåsbord fjörd jalapeño naïveté œuvre "
    "самовар балалайка"
)
# most frequent first: the weight of word r is 1 / (r + 1)
WORDS = tuple(_WORD_LIST.split())
#: words inserted into about one message in RARE_EVERY: searches with a handful of matches
RARE_WORDS = ("quokka", "zanzibar", "xylophone", "чебурашка", "鳳凰", "kumquat")
RARE_EVERY = 20_000
#: the query mix the search client cycles through: common and rare words, a prefix, phrases,
#: accents folded both ways, Cyrillic and CJK
QUERIES = (
    "coffee",
    "quokka",
    "run*",
    '"see you"',
    "cafe tomorrow",
    "завтра",
    "ежик",
    "東京",
    "zanzibar",
    "resume",
    "meeting project",
    "чебурашка",
    "鳳凰",
    "brulee",
    "kumquat",
    "strasse",
)


def users(prefix: str, searchers: int, partners: int) -> tuple[list[str], list[list[str]]]:
    """The searching users and, for each, their partners."""
    names = [f"{prefix}s{k}" for k in range(searchers)]
    return names, [[f"{prefix}p{k}x{j}" for j in range(partners)] for k in range(searchers)]


def corpus(
    messages: int, searchers: list[str], partners: list[list[str]], seed: int = 17
) -> Iterator[NewMessage]:
    rng = random.Random(seed)
    weights = [1.0 / (r + 1) for r in range(len(WORDS))]
    stamp = now_stamp()
    pairs = [(s, p) for s, ps in zip(searchers, partners, strict=True) for p in ps]
    conversations = [direct_conversation(s, p) for s, p in pairs]
    for n in range(messages):
        c = n % len(pairs)
        sender, recipient = pairs[c]
        words = rng.choices(WORDS, weights, k=rng.randint(4, 14))
        if rng.randrange(RARE_EVERY) == 0:
            words[rng.randrange(len(words))] = rng.choice(RARE_WORDS)
        yield NewMessage(
            conversation=conversations[c],
            id=f"{n}.0",
            sender_id=sender,
            text=" ".join(words).capitalize() + rng.choice((".", "?", "!", "")),
            server_timestamp=stamp,
            recipient_id=recipient,
        )
    # one known rare word last of all: found only when the index caught up with the tail
    s, p = pairs[0]
    yield NewMessage(
        conversation=conversations[0],
        id=f"{messages}.0",
        sender_id=s,
        text="zanzibar quokka",
        server_timestamp=stamp,
        recipient_id=p,
    )


#: db -> (messages left unindexed, time.monotonic()) at the end of its prefill
_PREFILLED: dict[Path, tuple[int, float]] = {}


def prefill(db: Path, messages: int, searchers: list[str], partners: list[list[str]]) -> int:
    """Store the corpus unindexed: the relay started on it indexes every message itself."""
    stored = store_messages(db, corpus(messages, searchers, partners), index=False)
    _PREFILLED[db] = (unindexed(db), time.monotonic())
    return stored


def unindexed(db: Path) -> int:
    """Messages the store at `db` has not indexed yet (read from a second connection)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5.0) as conn:
        ((indexed,),) = conn.execute("SELECT indexed_pos FROM search_progress").fetchall()
        ((last,),) = conn.execute("SELECT last_pos FROM positions").fetchall()
    return int(last) - int(indexed)


def wait_indexed(db: Path, timeout: float) -> tuple[int, float]:
    """Wait until the relay's indexer caught up with every message of `db`; returns how many
    messages were unindexed at the start and how long catching up took (s). For a store this
    process prefilled, both count from the end of the prefill: the relay's start is included,
    and a relay that caught up before the first look (5,000 messages take ~0.1 s) still
    reports what it indexed."""
    pending, started = _PREFILLED.pop(db, (unindexed(db), time.monotonic()))
    while unindexed(db) > 0:
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"the search index did not catch up within {timeout:.0f} s")
        time.sleep(0.1)
    return pending, time.monotonic() - started


class SearchClient:
    """The search client process (bench/searcher.py) pinned to `cpu`: it connects and
    authenticates before the constructor returns, then searches (an open loop at a fixed rate
    or a closed loop, as `cfg` says) until finish()."""

    def __init__(self, cfg: dict[str, Any], cpu: int | None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.searcher"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=(lambda: _pin(cpu)) if cpu is not None else None,
        )
        self._stdin: IO[str] = self.proc.stdin  # type: ignore[assignment]
        self._stdout: IO[str] = self.proc.stdout  # type: ignore[assignment]
        self._stdin.write(json.dumps(cfg) + "\n")
        self._stdin.flush()
        ready = self._stdout.readline()
        if ready.strip() != "ready":
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"search client failed to start: {ready.strip() or 'no output'}")

    def finish(self, t0: float, t1: float) -> dict[str, Any]:
        """Stop searching; the figures of the searches that completed within [t0, t1]
        (time.monotonic, the load generator's window)."""
        try:
            out, _ = self.proc.communicate(json.dumps({"from": t0, "to": t1}) + "\n", timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return {"error": "search client did not stop within 60 s"}
        try:
            result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"error": f"search client exited {self.proc.returncode} without a result"}
        return result

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _pin(cpu: int) -> None:
    os.sched_setaffinity(0, {cpu})
