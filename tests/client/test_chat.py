"""`relay chat`: two chat processes (`python -m relay chat`) talking through a real relay, driven
line by line through their stdin and stdout."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import trio
from support import start_relay

TIMEOUT = 10.0


class Chat:
    """A `python -m relay chat` process; `expect` waits for an output line matching a pattern."""

    def __init__(self, proc: trio.Process, name: str) -> None:
        self.proc = proc
        self.name = name
        self.lines: list[str] = []
        self._seen = 0
        self._changed = trio.Event()

    @classmethod
    async def start(cls, nursery: trio.Nursery, url: str, user: str) -> Chat:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "relay", "chat", "--url", url, "--user", user,
             "--reconnect-delay", "0.1"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        chat = cls(proc, user)
        nursery.start_soon(chat._read)
        return chat

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        buffer = b""
        async for chunk in self.proc.stdout:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            self.lines += [line.decode() for line in complete]
            self._changed.set()
            self._changed = trio.Event()
        if buffer:
            self.lines.append(buffer.decode())
        self._changed.set()

    async def say(self, line: str) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.send_all(line.encode() + b"\n")

    async def expect(self, pattern: str) -> re.Match[str]:
        """The first line after the last one matched that matches `pattern` (re.search)."""
        regex = re.compile(pattern)
        with trio.move_on_after(TIMEOUT):
            while True:
                for i in range(self._seen, len(self.lines)):
                    found = regex.search(self.lines[i])
                    if found:
                        self._seen = i + 1
                        return found
                if self.proc.returncode is not None and not self._changed.is_set():
                    break
                await self._changed.wait()
        raise AssertionError(
            f"{self.name}: no line matching {pattern!r} in:\n" + "\n".join(self.lines)
        )

    async def quit(self) -> int:
        assert self.proc.stdin is not None
        await self.proc.stdin.aclose()
        with trio.fail_after(TIMEOUT):
            return await self.proc.wait()


@pytest.mark.slow
async def test_two_chats_talk_through_every_status() -> None:
    async with trio.open_nursery() as nursery:
        relay = await start_relay(nursery, presence_grace=0.2)
        alice = await Chat.start(nursery, relay.url, "alice")
        bob = await Chat.start(nursery, relay.url, "bob")
        try:
            await alice.expect(r"^\* online as alice$")
            await bob.expect(r"^\* online as bob$")

            await alice.say("hello?")
            await alice.expect(r"^! no conversation open")
            await alice.say("/open bob")
            await alice.expect(r"^\* conversation with bob$")
            await alice.say("hello bob")
            await alice.expect(r"^\[pending\] to bob: hello bob$")
            await alice.expect(r"^\[sent\] to bob: hello bob$")
            await bob.expect(r"^<alice> hello bob$")
            await alice.expect(r"^\[delivered\] to bob: hello bob$")

            await bob.say("/list")
            await bob.expect(r"^  alice  unread 1  <alice> hello bob$")
            await bob.say("/open alice")
            await bob.expect(r"^\* conversation with alice$")
            await bob.expect(r"^  #1 <alice> hello bob$")
            await bob.say("/read")
            await bob.expect(r"^\* read up to #1 in alice$")
            await alice.expect(r"^\[read\] to bob: hello bob$")
            await bob.say("/list")
            await bob.expect(r"^  alice  unread 0  <alice> hello bob$")

            await bob.say("hi alice")
            await alice.expect(r"^<bob> hi alice$")
            await bob.expect(r"^\[delivered\] to alice: hi alice$")

            await alice.say("/group runners Runners bob")
            await alice.expect(r'^\* group #runners "Runners": alice, bob$')
            await bob.expect(r'^\* group #runners "Runners": alice, bob$')
            await alice.say("/open #runners")
            await alice.expect(r"^\* conversation with #runners$")
            await alice.say("hi all")
            await bob.expect(r"^<alice in #runners> hi all$")
            await alice.expect(r"^\[delivered\] to #runners: hi all$")

            await alice.say("/who bob")
            await alice.expect(r"^  bob: online$")
            await bob.say("/quit")
            await bob.expect(r"^\* bye$")
            with trio.fail_after(TIMEOUT):
                assert await bob.proc.wait() == 0
            await alice.expect(r"^\* bob is offline, last seen \d{4}-\d\d-\d\dT")
            await alice.say("/who bob")
            await alice.expect(r"^  bob: offline, last seen \d{4}-")
            assert await alice.quit() == 0
        finally:
            for chat in (alice, bob):
                if chat.proc.returncode is None:
                    chat.proc.kill()
        nursery.cancel_scope.cancel()


@pytest.mark.slow
async def test_chat_reports_an_unreachable_relay_and_exits() -> None:
    with trio.socket.socket() as s:
        await s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with trio.open_nursery() as nursery:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "relay", "chat", "--url", f"ws://127.0.0.1:{port}",
             "--user", "alice", "--reconnect-attempts", "2", "--reconnect-delay", "0.05"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        chat = Chat(proc, "alice")
        nursery.start_soon(chat._read)
        await chat.expect(r"^\* offline \(.*\); reconnecting, attempt 1$")
        await chat.expect(r"^\* disconnected: gave up after 2 attempts")
        await chat.say("/msg bob hello")
        await chat.expect(r"^! disconnected: ")
        await chat.say("/reconnect")
        await chat.expect(r"^\* disconnected: gave up after 2 attempts")
        assert await chat.quit() == 1
