"""Crash recovery: a relay killed with SIGKILL mid-stream loses no message it acknowledged.

`python -m relay serve --db <file>` runs as a real process; real WebSocket clients send without
pause (several in flight each) to a recipient that is offline, and to a group; the relay is
killed with SIGKILL while they send, then started again on the same file. The senders reconnect
and resend what they have no `sent` receipt for, as a client's offline outbox does. Then the
recipient connects and must get every message exactly once, in seq order, with seqs 1..N per
conversation (no gap, no reuse), each with the seq its `sent` receipt named.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

REPO = Path(__file__).resolve().parent.parent
SENDERS = ("s0", "s1", "s2")
GROUP = "crew"
IN_FLIGHT = 8


class RelayProcess:
    """`python -m relay serve` on a free port and the given database file."""

    def __init__(self, db: Path, logs: Path) -> None:
        self.db = db
        self.logs = logs
        self.process: trio.Process | None = None
        self.url = ""

    async def start(self) -> None:
        out = self.logs.with_suffix(".out")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
        # (local files: opening them does not block in any way that matters here)
        with open(out, "w") as stdout, open(self.logs.with_suffix(".err"), "a") as stderr:  # noqa: ASYNC230
            self.process = await trio.lowlevel.open_process(
                [
                    sys.executable,
                    "-m",
                    "relay",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--db",
                    str(self.db),
                    "--log-level",
                    "warning",
                    # the senders go as fast as the relay takes them: no rate limit in the way
                    "--rate-limit-messages",
                    "1000000",
                    "--rate-limit-burst",
                    "1000000",
                ],
                stdout=stdout,
                stderr=stderr,
                env=env,
                cwd=REPO,
            )
        with trio.fail_after(15):
            while "ws://" not in out.read_text():
                assert self.process.poll() is None, self.stderr()
                await trio.sleep(0.02)
        line = next(x for x in out.read_text().splitlines() if "ws://" in x)
        self.url = line[line.index("ws://") :].strip()

    def stderr(self) -> str:
        return self.logs.with_suffix(".err").read_text()

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            with trio.move_on_after(5):
                await self.process.wait()
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()


def auth(user: str, device: str) -> str:
    return json.dumps(
        {
            "type": "auth",
            "userId": user,
            "userName": user.upper(),
            "deviceId": device,
            "timestamp": "2026-02-05T10:30:00Z",
        }
    )


def message(sender: str, n: int) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "type": "message",
        "id": f"{sender}-{n}",
        "senderId": sender,
        "text": f"message {n} from {sender}",
        "timestamp": "2026-02-05T10:30:15Z",
    }
    if n % 3 == 2:
        frame["groupId"] = GROUP
    else:
        frame["recipientId"] = "r"
    return frame


class Progress:
    """Counts `sent` receipts across senders; `reached` is set at `target`."""

    def __init__(self, target: int) -> None:
        self.count = 0
        self.target = target
        self.reached = trio.Event()

    def acknowledged(self) -> None:
        self.count += 1
        if self.count >= self.target:
            self.reached.set()


class Sender:
    """One user sending numbered messages with up to IN_FLIGHT unacknowledged at a time."""

    def __init__(self, user: str, progress: Progress) -> None:
        self.user = user
        self.progress = progress
        self.sent: dict[str, int] = {}  # message id -> seq of its `sent` receipt
        self.written: dict[str, dict[str, Any]] = {}  # every frame ever sent, by id
        self.next = 0

    async def stream(self, url: str) -> None:
        """Send until the connection breaks (the relay is killed)."""
        try:
            async with open_websocket_url(url) as ws:
                await ws.send_message(auth(self.user, f"{self.user}-phone"))
                window = trio.Semaphore(IN_FLIGHT)

                async def receive() -> None:
                    while True:
                        frame = json.loads(await ws.get_message())
                        if frame["type"] == "receipt" and frame.get("status") == "sent":
                            self.sent[frame["id"]] = frame["seq"]
                            self.progress.acknowledged()
                            window.release()
                        assert frame.get("status") != "failed" and frame["type"] != "error", frame

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(receive)
                    while True:
                        await window.acquire()
                        frame = message(self.user, self.next)
                        self.next += 1
                        self.written[frame["id"]] = frame
                        await ws.send_message(json.dumps(frame))
        except* (ConnectionClosed, HandshakeError, OSError):
            pass  # the relay was killed

    async def resend_unacknowledged(self, url: str) -> None:
        """After the restart: send again every message without a `sent` receipt, until all have one."""
        missing = {i for i in self.written if i not in self.sent}
        async with open_websocket_url(url) as ws:
            await ws.send_message(auth(self.user, f"{self.user}-phone"))
            for mid in sorted(missing):
                await ws.send_message(json.dumps(self.written[mid]))
            with trio.fail_after(10):
                while missing:
                    frame = json.loads(await ws.get_message())
                    if frame["type"] == "receipt" and frame.get("status") == "sent":
                        seq = frame["seq"]
                        assert self.sent.setdefault(frame["id"], seq) == seq, frame
                        missing.discard(frame["id"])
                    assert frame["type"] != "error", frame


def stored_messages(db: Path) -> dict[tuple[str, str], int]:
    """(sender, id) -> seq of every message in the database file (read directly)."""
    conn = sqlite3.connect(db)
    try:
        return {(s, i): q for s, i, q in conn.execute("SELECT sender_id, id, seq FROM messages")}
    finally:
        conn.close()


async def create_group(url: str) -> None:
    async with open_websocket_url(url) as ws:
        await ws.send_message(auth("s0", "s0-setup"))
        await ws.send_message(
            json.dumps(
                {
                    "type": "group_create",
                    "groupId": GROUP,
                    "name": "Crew",
                    "members": [*SENDERS, "r"],
                    "ref": "g",
                }
            )
        )
        with trio.fail_after(5):
            while True:
                frame = json.loads(await ws.get_message())
                assert frame["type"] != "error", frame
                if frame["type"] == "group":
                    return


async def receive_everything(url: str, expected: int) -> list[dict[str, Any]]:
    """Connect as the recipient and collect its backlog until `expected` arrived and no more come."""
    got: list[dict[str, Any]] = []
    async with open_websocket_url(url) as ws:
        await ws.send_message(auth("r", "r-phone"))
        with trio.fail_after(10):
            while len(got) < expected:
                frame = json.loads(await ws.get_message())
                if frame["type"] == "message":
                    got.append(frame)
        with trio.move_on_after(0.3):  # anything more would be a duplicate
            while True:
                frame = json.loads(await ws.get_message())
                if frame["type"] == "message":
                    got.append(frame)
    return got


async def test_sigkill_mid_stream_loses_and_doubles_nothing(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path / "relay.db", tmp_path / "relay")
    progress = Progress(target=300)
    senders = [Sender(user, progress) for user in SENDERS]
    try:
        await relay.start()
        assert relay.db.exists()  # the relay keeps its store in the file it was given
        await create_group(relay.url)
        async with trio.open_nursery() as nursery:
            for sender in senders:
                nursery.start_soon(sender.stream, relay.url)
            with trio.fail_after(10):
                await progress.reached.wait()
            await relay.kill()  # mid-stream: every sender has messages in flight
        acknowledged_before_kill = {(s.user, i): seq for s in senders for i, seq in s.sent.items()}
        assert len(acknowledged_before_kill) >= 300
        assert any(len(s.written) > len(s.sent) for s in senders), "nothing was in flight"
        # the file the killed relay left holds every acknowledged message, with its seq
        on_disk = stored_messages(relay.db)
        assert {k: on_disk.get(k) for k in acknowledged_before_kill} == acknowledged_before_kill

        await relay.start()
        for sender in senders:
            await sender.resend_unacknowledged(relay.url)
        # a receipt seen before the kill still names the same seq after it
        for sender in senders:
            for mid, seq in sender.sent.items():
                if (sender.user, mid) in acknowledged_before_kill:
                    assert acknowledged_before_kill[(sender.user, mid)] == seq
        total = sum(len(s.written) for s in senders)
        got = await receive_everything(relay.url, total)
    finally:
        await relay.stop()

    # exactly once per (senderId, id)
    keys = [(f["senderId"], f["id"]) for f in got]
    assert len(keys) == len(set(keys)), "a message was delivered twice"
    assert set(keys) == {(s.user, i) for s in senders for i in s.written}
    # each with the seq its sender was told, seqs 1..N per conversation, delivered in seq order
    by_conversation: dict[str, list[int]] = defaultdict(list)
    for frame in got:
        sender = next(s for s in senders if s.user == frame["senderId"])
        assert frame["seq"] == sender.sent[frame["id"]], frame
        conversation = frame.get("groupId") or frame["senderId"]
        by_conversation[conversation].append(frame["seq"])
    assert set(by_conversation) == {*SENDERS, GROUP}
    for conversation, seqs in by_conversation.items():
        assert seqs == list(range(1, len(seqs) + 1)), conversation
