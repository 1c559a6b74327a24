"""Baseline for `python -m bench`: the straightforward Trio design.

trio-websocket serves every connection in its own task; each frame is parsed with orjson and
routed by userId by awaiting `send_message` once per recipient connection. It speaks the subset
of protocol v1 the benchmark uses: auth -> auth_ok; message -> `sent` receipt (seq) and the
delivered message (status, seq, serverTimestamp); group_create -> `group` to every member and
group fan-out; ping -> pong. State lives in memory for the life of the process.

Usage: python -m bench.baselines.trio_ws [--host 127.0.0.1] [--port 0];
prints "listening on ws://HOST:PORT" once it accepts connections.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
from typing import Any

import orjson
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

_ids = itertools.count(1)


def _now_iso() -> str:
    now = datetime.datetime.now(datetime.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


class Router:
    """userId -> open connections; groups; per-conversation seq counters."""

    def __init__(self) -> None:
        self.sockets: dict[str, set[WebSocketConnection]] = {}
        self.groups: dict[str, list[str]] = {}
        self.seqs: dict[str, int] = {}

    def next_seq(self, key: str) -> int:
        seq = self.seqs.get(key, 0) + 1
        self.seqs[key] = seq
        return seq

    async def send_to(
        self, user_id: str, text: str, except_ws: WebSocketConnection | None = None
    ) -> None:
        for ws in list(self.sockets.get(user_id, ())):
            if ws is except_ws:
                continue
            with contextlib.suppress(ConnectionClosed):
                await ws.send_message(text)


async def _reply(ws: WebSocketConnection, frame: dict[str, Any]) -> None:
    await ws.send_message(orjson.dumps(frame).decode())


async def _handle(
    router: Router, ws: WebSocketConnection, user: str | None, raw: str
) -> str | None:
    """Handle one client frame; returns the authenticated user id (or None)."""
    try:
        frame = orjson.loads(raw)
    except orjson.JSONDecodeError:
        await _reply(ws, {"type": "error", "code": "bad_json", "message": "not JSON"})
        return user
    if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
        await _reply(ws, {"type": "error", "code": "bad_frame", "message": "not a frame"})
        return user
    kind = frame["type"]
    if kind == "auth":
        uid = frame.get("userId")
        if not isinstance(uid, str) or not uid:
            await _reply(ws, {"type": "error", "code": "auth_failed", "message": "userId"})
            await ws.aclose(1008, "auth failed")
            return user
        router.sockets.setdefault(uid, set()).add(ws)
        await _reply(
            ws,
            {
                "type": "auth_ok",
                "userId": uid,
                "deviceId": frame.get("deviceId") or f"d{next(_ids)}",
                "sessionId": f"s{next(_ids)}",
                "serverTime": _now_iso(),
            },
        )
        return uid
    if user is None:
        await _reply(ws, {"type": "error", "code": "unauthenticated", "message": "auth first"})
        return user
    if kind == "message":
        if frame.get("senderId") != user:
            await _reply(
                ws,
                {
                    "type": "receipt",
                    "id": frame.get("id"),
                    "status": "failed",
                    "reason": "forbidden",
                },
            )
            return user
        stamp = _now_iso()
        group_id = frame.get("groupId")
        if isinstance(group_id, str):
            members = router.groups.get(group_id)
            if members is None or user not in members:
                await _reply(
                    ws,
                    {
                        "type": "receipt",
                        "id": frame.get("id"),
                        "status": "failed",
                        "reason": "forbidden",
                    },
                )
                return user
            seq = router.next_seq("g:" + group_id)
            await _reply(
                ws,
                {
                    "type": "receipt",
                    "id": frame.get("id"),
                    "groupId": group_id,
                    "status": "sent",
                    "seq": seq,
                    "timestamp": stamp,
                },
            )
            frame.update(status="delivered", seq=seq, serverTimestamp=stamp)
            text = orjson.dumps(frame).decode()
            for member in members:
                await router.send_to(member, text, except_ws=ws)
            return user
        peer = frame.get("recipientId")
        if not isinstance(peer, str):
            await _reply(
                ws,
                {"type": "receipt", "id": frame.get("id"), "status": "failed", "reason": "invalid"},
            )
            return user
        seq = router.next_seq(f"{min(user, peer)}\0{max(user, peer)}")
        await _reply(
            ws,
            {
                "type": "receipt",
                "id": frame.get("id"),
                "peerId": peer,
                "status": "sent",
                "seq": seq,
                "timestamp": stamp,
            },
        )
        frame.update(status="delivered", seq=seq, serverTimestamp=stamp)
        text = orjson.dumps(frame).decode()
        await router.send_to(peer, text)
        if peer != user:
            await router.send_to(user, text, except_ws=ws)
        return user
    if kind == "group_create":
        members = [m for m in frame.get("members", []) if isinstance(m, str)]
        if user not in members:
            members.append(user)
        router.groups[str(frame.get("groupId"))] = members
        reply: dict[str, Any] = {
            "type": "group",
            "groupId": frame.get("groupId"),
            "name": frame.get("name", ""),
            "members": members,
        }
        if "ref" in frame:
            reply["ref"] = frame["ref"]
        text = orjson.dumps(reply).decode()
        for member in members:
            await router.send_to(member, text)
        return user
    if kind == "ping":
        await _reply(ws, {"type": "pong", "ref": frame.get("ref"), "serverTime": _now_iso()})
        return user
    await _reply(ws, {"type": "error", "code": "unknown_type", "message": kind})
    return user


async def _connection(router: Router, request: WebSocketRequest) -> None:
    ws = await request.accept()
    user: str | None = None
    try:
        while True:
            raw = await ws.get_message()
            if isinstance(raw, bytes):
                await ws.aclose(1003, "binary frames are not supported")
                return
            user = await _handle(router, ws, user, raw)
    except ConnectionClosed:
        pass
    finally:
        if user is not None:
            live = router.sockets.get(user)
            if live is not None:
                live.discard(ws)
                if not live:
                    del router.sockets[user]


async def serve(host: str, port: int) -> None:
    router = Router()

    async def handler(request: WebSocketRequest) -> None:
        await _connection(router, request)

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handler, host, port, None)
        print(f"listening on ws://{host}:{server.port}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(serve, args.host, args.port)


if __name__ == "__main__":
    main()
