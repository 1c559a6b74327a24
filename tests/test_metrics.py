"""The relay's Prometheus metrics as an operator scrapes them: GET /metrics of a real relay
(127.0.0.1, port 0) driven by real WebSocket clients, and of `relay serve` in a process of its
own. docs/PROTOCOL.md's metrics table and what /metrics exposes are held equal."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import jwt
import pytest
import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support import JsonClient, http_get, start_relay
from trio_websocket import open_websocket_url

from relay import Relay
from relay.metrics import RelayMetrics

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = ROOT / "docs" / "PROTOCOL.md"
WAIT = 3.0
SECRET = "s" * 40


# --- helpers ----------------------------------------------------------------------------------


async def scrape(relay: Relay) -> dict[str, float]:
    """Every sample of /metrics: `name` or `name{label="value",...}` (labels sorted) -> value."""
    status, body = await http_get(relay, "/metrics")
    assert status == 200
    return samples(body.decode())


def samples(text: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


def families(text: str) -> list[str]:
    """The metric families of a Prometheus text, by their `# TYPE` lines, in order."""
    return [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]


def documented_metrics() -> set[str]:
    """The metric names of docs/PROTOCOL.md's metrics table."""
    text = PROTOCOL.read_text()
    table = text[text.index("| metric | kind | meaning |") :].split("\n\n", 1)[0]
    rows = [line for line in table.splitlines()[2:] if line.startswith("| `")]
    return {row.split("`")[1].split("{")[0] for row in rows}


@asynccontextmanager
async def connect(relay: Relay, user: str, **auth: Any) -> AsyncIterator[JsonClient]:
    async with open_websocket_url(relay.url) as ws:
        client = JsonClient(ws, WAIT)
        await client.send({"type": "auth", "userId": user, **auth})
        await client.expect("auth_ok")
        yield client


@asynccontextmanager
async def raw_client(relay: Relay) -> AsyncIterator[JsonClient]:
    async with open_websocket_url(relay.url) as ws:
        yield JsonClient(ws, WAIT)


async def until(relay: Relay, name: str, value: float) -> dict[str, float]:
    """Scrape until `name` reads `value` (what a close changes lands once its teardown ran)."""
    with trio.fail_after(WAIT):
        while True:
            now = await scrape(relay)
            if now.get(name) == value:
                return now
            await trio.sleep(0.01)


def token(user: str, *, expires_in: float = 600.0, secret: str = SECRET) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now, "exp": now + expires_in}, secret, "HS256")


# --- the table and the registries -------------------------------------------------------------


async def test_the_documented_table_is_exactly_what_metrics_exposes(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    relay = await start_relay(nursery, db_path=str(tmp_path / "relay.db"))
    status, body = await http_get(relay, "/metrics")
    assert status == 200
    exposed = families(body.decode())
    relay_families = {name for name in exposed if name.startswith("relay_")}
    assert relay_families == documented_metrics()
    assert len(exposed) == len(set(exposed)), "a metric family is rendered twice"
    # the default registry's process and interpreter collectors come along
    assert "process_cpu_seconds_total" in exposed
    assert "process_resident_memory_bytes" in exposed
    assert "python_info" in exposed


async def test_two_relays_in_one_process_each_show_their_own_and_the_process(
    nursery: trio.Nursery,
) -> None:
    one = await start_relay(nursery)
    two = await start_relay(nursery)
    async with connect(one, "ann") as ann, connect(one, "bo"):
        await ann.send({"type": "message", "id": "m1", "recipientId": "bo", "text": "x"})
        await ann.expect("receipt", id="m1", status="sent")
        first = await scrape(one)
        second = await scrape(two)
    assert (first["relay_users_online"], second["relay_users_online"]) == (2, 0)
    assert (first["relay_messages_accepted_total"], second["relay_messages_accepted_total"]) == (
        1,
        0,
    )
    assert first["process_cpu_seconds_total"] > 0 and second["process_cpu_seconds_total"] > 0


def test_export_to_default_puts_a_relays_metrics_on_that_registry_once() -> None:
    default = CollectorRegistry(auto_describe=True)  # as prometheus_client.REGISTRY
    metrics = RelayMetrics()
    metrics.stats.messages_accepted = 7
    metrics.export_to_default(default)
    assert "relay_messages_accepted_total 7.0" in generate_latest(default).decode()
    rendered = metrics.render().decode()
    assert families(rendered).count("relay_messages_accepted_total") == 1
    with pytest.raises(ValueError):  # a second relay on the same default registry collides
        RelayMetrics().export_to_default(default)
    metrics.unexport()
    assert "relay_" not in generate_latest(default).decode()


# --- traffic ----------------------------------------------------------------------------------


@pytest.mark.parametrize("store", ["memory", "sqlite"])
async def test_metrics_follow_the_traffic(
    nursery: trio.Nursery, tmp_path: Path, store: str
) -> None:
    relay = await start_relay(
        nursery,
        db_path=None if store == "memory" else str(tmp_path / "relay.db"),
        rate_limit_messages=0.001,  # no refill within the test: the burst is what a user has
        rate_limit_burst=10,
        group_rate_burst=1,
        group_rate_limit=0.001,
    )
    before = await scrape(relay)
    assert (before["relay_users_online"], before["relay_devices_online"]) == (0, 0)
    assert before["relay_delivery_seconds_count"] == 0

    async with (
        connect(relay, "alice") as alice,
        connect(relay, "bob", deviceId="phone") as phone,
        connect(relay, "bob", deviceId="watch") as watch,
    ):
        now = await scrape(relay)
        assert (now["relay_users_online"], now["relay_devices_online"]) == (2, 3)

        for i in range(3):
            await alice.send({"type": "message", "id": f"b{i}", "recipientId": "bob", "text": "x"})
            await alice.expect("receipt", id=f"b{i}", status="sent")
            for device in (phone, watch):
                await device.expect("message", id=f"b{i}")
        for i in range(2):  # carol is offline: her backlog
            await alice.send(
                {"type": "message", "id": f"c{i}", "recipientId": "carol", "text": "y"}
            )
            await alice.expect("receipt", id=f"c{i}", status="sent")
        now = await scrape(relay)
        assert now["relay_messages_accepted_total"] == 5
        # 3 messages x bob's 2 devices, each counted once: live, or by the device's backlog
        # when it arrived while that backlog (empty, but a store read away) was still running
        delivered = now["relay_messages_delivered_total"]
        assert delivered + now["relay_backlog_messages_sent_total"] == 6
        assert now["relay_delivery_seconds_count"] >= 1
        assert 0 < now["relay_delivery_seconds_sum"] < WAIT * now["relay_delivery_seconds_count"]
        if store == "sqlite":
            assert now["relay_store_commit_batch_size_count"] >= 1
            assert now["relay_store_commit_batch_size_sum"] >= 5  # device registrations too
            assert now["relay_store_commit_seconds_count"] >= 1
            assert (
                now['relay_store_commit_seconds_bucket{le="+Inf"}']
                == (now["relay_store_commit_seconds_count"])
            )
        else:
            assert now["relay_store_commit_batch_size_count"] == 0

        # refusals: not the sender, then more than the burst left (5 of 10 are used)
        await alice.send(
            {"type": "message", "id": "f1", "recipientId": "bob", "text": "z", "senderId": "eve"}
        )
        assert (await alice.expect("receipt", id="f1"))["reason"] == "forbidden"
        for i in range(8):
            await alice.send({"type": "message", "id": f"r{i}", "recipientId": "bob", "text": "z"})
        receipts = [await alice.expect("receipt", id=f"r{i}") for i in range(8)]
        limited = sum(r.get("reason") == "rate_limited" for r in receipts)
        assert limited >= 3
        now = await scrape(relay)
        assert now['relay_messages_failed_total{reason="forbidden"}'] == 1
        assert now['relay_messages_failed_total{reason="rate_limited"}'] == limited
        assert now['relay_rate_limited_frames_total{frame="message"}'] == limited
        assert now["relay_messages_accepted_total"] == 5 + 8 - limited

        # group changes beyond their burst; a malformed frame
        for ref in ("g1", "g2"):
            await alice.send(
                {
                    "type": "group_create",
                    "groupId": ref,
                    "name": "G",
                    "members": ["bob"],
                    "ref": ref,
                }
            )
        await alice.expect("group", ref="g1")
        assert (await alice.expect("error", ref="g2"))["code"] == "rate_limited"
        await alice.send("{not json")
        await alice.expect("error", code="bad_json")
        now = await scrape(relay)
        assert now['relay_rate_limited_frames_total{frame="group"}'] == 1
        assert now['relay_error_frames_total{code="rate_limited"}'] == 1
        assert now['relay_error_frames_total{code="bad_json"}'] == 1

    await until(relay, "relay_devices_online", 0)
    gone = await scrape(relay)
    assert gone["relay_users_online"] == 0

    async with connect(relay, "carol") as carol:
        for i in range(2):
            await carol.expect("message", id=f"c{i}")
        now = await scrape(relay)
        sent = now["relay_backlog_messages_sent_total"]
        assert sent == gone["relay_backlog_messages_sent_total"] + 2  # carol's backlog
        assert (now["relay_users_online"], now["relay_devices_online"]) == (1, 1)


async def test_refused_sign_ins_are_counted_by_reason(nursery: trio.Nursery) -> None:
    relay = await start_relay(nursery, auth_secret=SECRET, max_devices_per_user=1, auth_timeout=1.0)
    attempts = {
        "token_missing": {},
        "bad_signature": {"token": token("ann", secret="x" * 40)},
        "token_expired": {"token": token("ann", expires_in=-3600)},
        "wrong_subject": {"token": token("someone-else")},
    }
    for reason, extra in attempts.items():
        async with raw_client(relay) as client:
            await client.send({"type": "auth", "userId": "ann", **extra})
            assert (await client.expect("error"))["code"] == "auth_failed", reason
            assert await client.closed() == 1008
    async with raw_client(relay) as client:
        await client.send({"type": "auth"})  # no userId: the frame itself is refused
        assert (await client.expect("error"))["code"] == "auth_failed"
    async with connect(relay, "ann", token=token("ann")), raw_client(relay) as second:
        await second.send({"type": "auth", "userId": "ann", "token": token("ann")})
        assert (await second.expect("error"))["code"] == "auth_failed"
    async with raw_client(relay) as silent:
        assert await silent.closed() == 1008  # the auth timeout

    now = await scrape(relay)
    for reason in [*attempts, "invalid_frame", "too_many_devices", "timeout"]:
        assert now[f'relay_auth_failures_total{{reason="{reason}"}}'] == 1, reason
    assert sum(v for k, v in now.items() if k.startswith("relay_auth_failures_total")) == 7
    # every refusal but the timeout (a close without a frame) was an error frame
    assert now['relay_error_frames_total{code="auth_failed"}'] == 6


# --- relay serve: the default registry --------------------------------------------------------

URL_LINE = re.compile(r"WebSocket server running on ws://\S+:(\d+)")


@contextmanager
def serving(*args: str, cwd: Path) -> Iterator[int]:
    """`python -m relay serve` on port 0 until the block ends (then SIGTERM, exit 0): its port."""
    process = subprocess.Popen(
        [sys.executable, "-m", "relay", "serve", "--port", "0", "--memory", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        match = None
        deadline = time.monotonic() + 20
        while match is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line and process.poll() is not None:
                break
            match = URL_LINE.search(line)
        assert match is not None, "relay serve printed no URL line"
        yield int(match.group(1))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_relay_serve_exposes_its_metrics_and_the_process_once(tmp_path: Path) -> None:
    with serving(cwd=tmp_path) as port:

        async def scrape_it() -> str:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
            await stream.aclose()
            assert data.startswith(b"HTTP/1.1 200"), data[:100]
            return data.split(b"\r\n\r\n", 1)[1].decode()

        text = trio.run(scrape_it)
    exposed = families(text)
    assert len(exposed) == len(set(exposed)), "a metric family is rendered twice"
    assert {name for name in exposed if name.startswith("relay_")} == documented_metrics()
    assert "process_cpu_seconds_total" in exposed and "python_gc_collections_total" in exposed
