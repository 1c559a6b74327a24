"""RelayClient across relay restarts: `python -m relay serve` as a subprocess on a fixed port with
a SQLite file, stopped with SIGTERM or SIGKILL mid-stream and started again on the same port and
file. Every message is delivered exactly once; none is stored twice."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from relay.client import ConversationId, MessageStatus, RelayClient

TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class RelayProcess:
    def __init__(self, port: int, db: Path) -> None:
        self.port = port
        self.db = db
        self.proc: trio.Process | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.proc = await trio.lowlevel.open_process(
            [
                sys.executable, "-m", "relay", "serve",
                "--host", "127.0.0.1", "--port", str(self.port), "--db", str(self.db),
                "--presence-grace", "0.2", "--drain-timeout", "1",
                "--rate-limit-messages", "100000", "--rate-limit-burst", "100000",
            ],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        with trio.fail_after(TIMEOUT):
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(f"relay exited with {self.proc.returncode}")
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", self.port)
                except OSError:
                    await trio.sleep(0.02)
                    continue
                await stream.aclose()
                return

    async def stop(self, sig: signal.Signals) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        with trio.fail_after(TIMEOUT):
            code = await self.proc.wait()
        self.proc = None
        return code

    async def aclose(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            await self.proc.wait()


def client(url: str, user: str) -> RelayClient:
    return RelayClient(url, user_id=user, reconnect_delay=0.05, reconnect_attempts=400)


async def _restart_mid_stream(tmp_path: Path, sig: signal.Signals) -> None:
    relay = RelayProcess(free_port(), tmp_path / "relay.db")
    await relay.start()
    try:
        async with client(relay.url, "alice") as alice, client(relay.url, "bob") as bob:
            with trio.fail_after(TIMEOUT):
                await alice.wait_online()
                await bob.wait_online()
            ids: list[str] = []
            for i in range(100):
                ids.append((await alice.send_message("bob", f"before {i}")).id)
                if i % 10 == 9:
                    await trio.sleep(0.002)  # let some be answered, some not: mid-stream
            confirmed = [m for m in ids if alice.state.find(m).status is not MessageStatus.PENDING]  # type: ignore[union-attr]
            code = await relay.stop(sig)
            if sig is signal.SIGKILL:
                assert code == -signal.SIGKILL
            # written while the relay is down: they wait in the outbox
            for i in range(20):
                ids.append((await alice.send_message("bob", f"while down {i}")).id)
            assert alice.state.outbox[-1].id == ids[-1]
            await relay.start()
            for i in range(30):
                ids.append((await alice.send_message("bob", f"after {i}")).id)
            with trio.fail_after(TIMEOUT):
                await alice.flush()
                await bob.wait_until(
                    lambda s: len(s.messages(ConversationId.direct("alice"))) == len(ids)
                )
            got = bob.state.messages(ConversationId.direct("alice"))
            assert [m.id for m in got] == ids
            assert [m.seq for m in got] == list(range(1, len(ids) + 1))
            # what the relay stored: each message once, in order (a durable `sent` survived)
            stored: list[str] = []
            async with client(relay.url, "bob") as reader:
                with trio.fail_after(TIMEOUT):
                    await reader.wait_online()
                    before = len(ids) + 10
                    while True:
                        page = await reader.load_history("alice", before=before, limit=100)
                        stored[:0] = [m.id for m in page.messages]
                        if not page.has_more:
                            break
                        before = page.messages[0].seq or 0
            assert stored == ids
            assert set(confirmed) <= set(stored)
            sent = alice.state.messages(ConversationId.direct("bob"))
            assert all(m.status is not MessageStatus.PENDING for m in sent)
    finally:
        await relay.aclose()


@pytest.mark.slow
async def test_sigterm_mid_stream_delivers_everything_once(tmp_path: Path) -> None:
    await _restart_mid_stream(tmp_path, signal.SIGTERM)


@pytest.mark.slow
async def test_sigkill_mid_stream_delivers_everything_once(tmp_path: Path) -> None:
    await _restart_mid_stream(tmp_path, signal.SIGKILL)
