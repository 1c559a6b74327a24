"""`relay chat`: a line-by-line terminal chat on RelayClient.

    relay chat --url ws://localhost:8080 --user alice [--name Alice] [--token JWT]

With token auth on, the token comes from --token or RELAY_TOKEN.

Standard input carries commands, one per line; standard output gets one line per thing that
happened, so a script (or a test) can drive it through pipes:

    /list              conversations, newest first, with unread counts and a preview
    /open bob          make bob (or #group) the active conversation and show its latest messages
    /more              older messages of the active conversation
    text               send to the active conversation
    /msg bob text      send to bob without switching
    /read              mark the active conversation read
    /who bob [carol]   presence
    /group g1 Name alice bob    create a group (you are a member)
    /status away       announce a status (online, away, busy)
    /reconnect         try again after the client gave up
    /help, /quit       (end of input quits too)

Output lines: `<bob> text` (incoming), `<bob in #g1> text` (incoming, group), `[sent] to bob:
text` (own messages as their status changes: pending, sent, delivered, read, failed: reason),
`* bob is online` / `* bob is offline, last seen ...` (presence), `* ...` (connection and other
notices), `! ...` (errors).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TextIO

import trio

from relay.client.connection import RelayClient
from relay.client.events import EventStream
from relay.client.model import (
    ConnectionChanged,
    ConnectionState,
    ConversationId,
    ErrorReceived,
    Event,
    GroupChanged,
    Message,
    MessageAdded,
    MessageStatus,
    MessageUpdated,
    PresenceChanged,
    RequestFailed,
    TypingChanged,
)
from relay.errors import ClientError, ConnectionLost

#: How long a command waits for the relay's answer before saying so.
ANSWER_TIMEOUT = 10.0
#: How long /quit waits for unconfirmed messages to reach the relay.
QUIT_FLUSH_TIMEOUT = 3.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="relay chat", description="Terminal chat over a relay.")
    p.add_argument("--url", default="ws://localhost:8080", help="relay WebSocket URL")
    p.add_argument("--user", required=True, help="your user id")
    p.add_argument("--name", help="display name (default: the user id)")
    p.add_argument("--avatar", help="avatar text, e.g. initials")
    p.add_argument(
        "--token",
        default=os.environ.get("RELAY_TOKEN"),
        help="auth token (JWT) when the relay checks tokens (default: env RELAY_TOKEN, which "
        "keeps it out of the process list)",
    )
    p.add_argument("--device", help="stable device id (default: the relay chooses one)")
    p.add_argument("--reconnect-attempts", type=int, default=5)
    p.add_argument("--reconnect-delay", type=float, default=3.0)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the chat until /quit or end of input; 0 on a clean exit, 1 when the relay was lost."""
    args = _parser().parse_args(argv)
    try:
        return trio.run(_chat, args, sys.stdin, sys.stdout)
    except KeyboardInterrupt:
        return 130


async def _chat(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> int:
    client = RelayClient(
        args.url,
        user_id=args.user,
        user_name=args.name or args.user,
        user_avatar=args.avatar,
        token=args.token,
        device_id=args.device,
        reconnect_attempts=args.reconnect_attempts,
        reconnect_delay=args.reconnect_delay,
    )
    ui = ChatUI(client, lambda line: print(line, file=stdout, flush=True))
    ui.say(f"* connecting to {args.url} as {args.user}")
    events = client.events(buffer=10_000)
    async with client, trio.open_nursery() as nursery:
        nursery.start_soon(ui.show_events, events)
        await ui.read_commands(stdin)
        nursery.cancel_scope.cancel()
    return 1 if ui.lost else 0


class ChatUI:
    """Turns commands into client calls and client events into lines."""

    def __init__(self, client: RelayClient, say: Callable[[str], None]) -> None:
        self.client = client
        self.say = say
        self.active: ConversationId | None = None
        self.lost = False
        self._shown: dict[str, MessageStatus] = {}  # own message id -> status last printed

    # --- events -----------------------------------------------------------------------------------

    async def show_events(self, events: EventStream) -> None:
        async for event in events:
            self.show(event)

    def show(self, event: Event) -> None:
        me = self.client.user_id
        if isinstance(event, ConnectionChanged):
            if event.state is ConnectionState.ONLINE:
                self.lost = False
                self.say(f"* online as {me}")
            elif event.state is ConnectionState.OFFLINE:
                self.say(f"* offline ({event.reason}); reconnecting, attempt {event.attempt}")
            elif event.state is ConnectionState.DISCONNECTED:
                self.lost = True
                self.say(f"* disconnected: {event.reason}")
        elif isinstance(event, MessageAdded | MessageUpdated):
            self._show_message(event.message)
        elif isinstance(event, PresenceChanged):
            p = event.presence
            if p.user_id != me:
                seen = f", last seen {p.last_seen}" if p.status == "offline" and p.last_seen else ""
                self.say(f"* {p.user_id} is {p.status}{seen}")
        elif isinstance(event, TypingChanged):
            if event.typing:
                where = f" in {event.conversation}" if event.conversation.is_group else ""
                self.say(f"* {event.user_id} is typing{where}")
        elif isinstance(event, GroupChanged):
            g = event.group
            self.say(f'* group #{g.group_id} "{g.name}": {", ".join(g.members)}')
        elif isinstance(event, ErrorReceived):
            self.say(f"! {event.code}: {event.message}")

    def _show_message(self, m: Message) -> None:
        if not m.outgoing:
            if m.id in self._shown:
                return
            self._shown[m.id] = m.status
            where = f" in {m.conversation}" if m.conversation.is_group else ""
            self.say(f"<{m.sender_id}{where}> {m.text}")
            return
        if self._shown.get(m.id) is m.status:
            return
        if m.id not in self._shown and m.status is not MessageStatus.PENDING:
            # written on another device of this user
            self._shown[m.id] = m.status
            self.say(f"<{m.sender_id} to {m.conversation}> {m.text}")
            return
        self._shown[m.id] = m.status
        status = m.status.value
        if m.status is MessageStatus.FAILED:
            status = f"failed: {m.reason}"
        self.say(f"[{status}] to {m.conversation}: {m.text}")

    # --- commands ---------------------------------------------------------------------------------

    async def read_commands(self, stdin: TextIO) -> None:
        while True:
            line = await trio.to_thread.run_sync(stdin.readline, abandon_on_cancel=True)
            if not line:
                await self._flush_before_quit()
                return
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            try:
                if not await self.command(line):
                    await self._flush_before_quit()
                    return
            except ConnectionLost as exc:
                self.say(f"! disconnected: {exc}")
            except RequestFailed as exc:
                self.say(f"! {exc.code}: {exc.message}")
            except ClientError as exc:
                self.say(f"! {exc}")

    async def command(self, line: str) -> bool:
        """Carry out one input line; False means quit."""
        if not line.startswith("/"):
            if self.active is None:
                self.say("! no conversation open: /open USER first")
            else:
                await self.client.send_message(self.active, line)
            return True
        name, _, rest = line[1:].partition(" ")
        rest = rest.strip()
        if name in ("quit", "exit", "q"):
            return False
        handler = {
            "help": self._help,
            "list": self._list,
            "open": self._open,
            "more": self._more,
            "msg": self._msg,
            "read": self._read,
            "who": self._who,
            "group": self._group,
            "status": self._status,
            "reconnect": self._reconnect,
        }.get(name)
        if handler is None:
            self.say(f"! unknown command /{name} (try /help)")
        else:
            await handler(rest)
        return True

    async def _help(self, rest: str) -> None:
        lines = (__doc__ or "").splitlines()
        start = next(i for i, line in enumerate(lines) if line.strip().startswith("/list"))
        end = next(i for i, line in enumerate(lines) if line.strip().startswith("/help"))
        for line in lines[start : end + 1]:
            self.say(line.strip())

    async def _list(self, rest: str) -> None:
        if self.client.connection_state is ConnectionState.ONLINE:
            with trio.move_on_after(ANSWER_TIMEOUT) as scope:
                await self.client.refresh_conversations()
            if scope.cancelled_caught:
                self.say("! no answer from the relay; showing what is known")
        rows = self.client.state.conversations()
        if not rows:
            self.say("* no conversations")
        for c in rows:
            preview = ""
            if c.last_message is not None:
                preview = f"  <{c.last_message.sender_id}> {c.last_message.text[:60]}"
            title = f' "{c.name}"' if c.name else ""
            self.say(f"  {c.id}{title}  unread {c.unread}{preview}")

    async def _open(self, rest: str) -> None:
        if not rest:
            self.say("! usage: /open USER or /open #GROUP")
            return
        self.active = ConversationId.parse(rest.split()[0])
        self.say(f"* conversation with {self.active}")
        with trio.move_on_after(ANSWER_TIMEOUT) as scope:
            await self.client.open_conversation(self.active)
        if scope.cancelled_caught:
            self.say("! no answer from the relay; showing what is known")
        self._print_messages(self.client.state.messages(self.active))

    async def _more(self, rest: str) -> None:
        if self.active is None:
            self.say("! no conversation open")
            return
        page = None
        with trio.move_on_after(ANSWER_TIMEOUT):
            page = await self.client.load_history(self.active)
        if page is None:
            self.say("! no answer from the relay")
            return
        self._print_messages(list(page.messages))
        if not page.has_more:
            self.say("* (start of conversation)")

    def _print_messages(self, messages: list[Message]) -> None:
        for m in messages:
            seq = f"#{m.seq}" if m.seq is not None else "#-"
            status = f" [{m.status.value}]" if m.outgoing else ""
            self.say(f"  {seq} <{m.sender_id}> {m.text}{status}")
            self._shown.setdefault(m.id, m.status)

    async def _msg(self, rest: str) -> None:
        to, _, text = rest.partition(" ")
        if not to or not text.strip():
            self.say("! usage: /msg USER text")
            return
        await self.client.send_message(ConversationId.parse(to), text)

    async def _read(self, rest: str) -> None:
        if self.active is None:
            self.say("! no conversation open")
            return
        await self.client.mark_read(self.active)
        conv = self.client.state.conversation(self.active)
        self.say(f"* read up to #{conv.read_seq if conv else 0} in {self.active}")

    async def _who(self, rest: str) -> None:
        users = rest.split() or (
            [self.active.id] if self.active and not self.active.is_group else []
        )
        if not users:
            self.say("! usage: /who USER ...")
            return
        answer = None
        with trio.move_on_after(ANSWER_TIMEOUT):
            answer = await self.client.query_presence(users)
        if answer is None:
            self.say("! no answer from the relay")
            return
        for user in users:
            p = answer.get(user)
            if p is None:
                self.say(f"  {user}: unknown")
            elif p.status == "offline":
                self.say(f"  {user}: offline, last seen {p.last_seen or 'never'}")
            else:
                self.say(f"  {user}: {p.status}")

    async def _group(self, rest: str) -> None:
        parts = rest.split()
        if len(parts) < 2:
            self.say("! usage: /group ID NAME [MEMBER ...]")
            return
        gid, name, members = parts[0], parts[1], parts[2:]
        with trio.move_on_after(ANSWER_TIMEOUT) as scope:
            await self.client.create_group(gid, name, [self.client.user_id, *members])
        if scope.cancelled_caught:
            self.say("! no answer from the relay")

    async def _status(self, rest: str) -> None:
        status = rest or "online"
        await self.client.set_status(status)
        self.say(f"* status {status}")

    async def _reconnect(self, rest: str) -> None:
        if self.client.connection_state is not ConnectionState.DISCONNECTED:
            self.say("* still connected or trying")
            return
        self.client.reconnect()

    async def _flush_before_quit(self) -> None:
        if self.client.state.outbox and not self.lost:
            with trio.move_on_after(QUIT_FLUSH_TIMEOUT) as scope:
                await self.client.flush()
            if scope.cancelled_caught:
                self.say(f"! {len(self.client.state.outbox)} message(s) not sent")
        self.say("* bye")


if __name__ == "__main__":
    sys.exit(main())
