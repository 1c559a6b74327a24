"""One WebRTC peer for tests/calls/test_webrtc.py: a separate process (aiortc runs on asyncio,
the relay's tests on Trio) that signals a call through a real relay over a plain WebSocket
and opens a data channel to the other peer over loopback.

    python webrtc_peer.py URL caller|callee

The caller (alice) offers a data channel to bob; the callee (bob) answers. The SDP of
call_invite / call_accept carries no candidate: every ICE candidate travels in call_signal
(trickle ICE, as a browser sends them), then an end-of-candidates signal. Over the channel the
caller says "ping", the callee answers "pong", and the caller hangs up. Each peer prints one
JSON line of what it saw (the callee first prints "ready" once authenticated) and exits 0;
anything unexpected raises, so the process exits non-zero with a traceback.

Candidates are gathered on 127.0.0.1 alone: aioice leaves loopback out of its host addresses,
and the machine's other interface must carry no test traffic. No STUN or TURN server is
configured, so nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import aioice.ice
import websockets
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.sdp import candidate_from_sdp

TIMEOUT = 60.0  # seconds the whole exchange may take before the peer gives up
CALL_ID = "call-webrtc-1"


def _loopback_only(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    return ["127.0.0.1"]


aioice.ice.get_host_addresses = _loopback_only


def split_candidates(sdp: str) -> tuple[str, list[dict[str, Any]]]:
    """`sdp` without its candidate lines, and those candidates as call_signal payloads
    (the browser's RTCIceCandidateInit shape: candidate, sdpMid, sdpMLineIndex)."""
    kept: list[str] = []
    found: list[dict[str, Any]] = []
    index, mid = -1, None
    for line in sdp.splitlines():
        if line.startswith("m="):
            index, mid = index + 1, None
        elif line.startswith("a=mid:"):
            mid = line[len("a=mid:") :]
        if line.startswith("a=candidate:"):
            found.append({"candidate": line[2:], "sdpMid": mid, "sdpMLineIndex": index})
            continue
        if line == "a=end-of-candidates":
            continue
        kept.append(line)
    return "\r\n".join(kept) + "\r\n", found


class Peer:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.signals_in = 0
        self.remote_sdp_candidates = 0
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    async def recv(self) -> dict[str, Any]:
        frame: dict[str, Any] = json.loads(await self.ws.recv())
        return frame

    async def local_description(self) -> tuple[str, list[dict[str, Any]]]:
        """This side's SDP (after gathering) without candidates, and the candidates."""
        assert self.pc.localDescription is not None
        return split_candidates(self.pc.localDescription.sdp)

    async def trickle(self, candidates: list[dict[str, Any]]) -> None:
        for payload in candidates:
            await self.send({"type": "call_signal", "callId": CALL_ID, "payload": payload})
        await self.send({"type": "call_signal", "callId": CALL_ID, "payload": {"candidate": ""}})

    async def on_signal(self, payload: dict[str, Any]) -> None:
        self.signals_in += 1
        line = payload["candidate"]
        if not line:  # end of candidates
            await self.pc.addIceCandidate(None)
            return
        candidate = candidate_from_sdp(line[len("candidate:") :])
        candidate.sdpMid = payload["sdpMid"]
        candidate.sdpMLineIndex = payload["sdpMLineIndex"]
        await self.pc.addIceCandidate(candidate)

    def remote_hosts(self) -> list[str]:
        sctp = self.pc.sctp
        assert sctp is not None
        return sorted({c.ip for c in sctp.transport.transport.getRemoteCandidates()})


async def auth(ws: Any, user: str, device: str) -> None:
    await ws.send(json.dumps({"type": "auth", "userId": user, "deviceId": device}))
    while True:
        frame = json.loads(await ws.recv())
        if frame["type"] == "auth_ok":
            return
        if frame["type"] == "error":
            raise RuntimeError(f"auth refused: {frame}")


async def caller(url: str) -> dict[str, Any]:
    async with websockets.connect(url) as ws:
        await auth(ws, "alice", "laptop")
        peer = Peer(ws)
        channel = peer.pc.createDataChannel("chat")
        received: list[str] = []

        @channel.on("open")
        def on_open() -> None:
            channel.send("ping")

        @channel.on("message")
        def on_message(message: str) -> None:
            received.append(message)
            if not peer.done.done():
                peer.done.set_result(message)

        await peer.pc.setLocalDescription(await peer.pc.createOffer())
        offer, candidates = await peer.local_description()
        await peer.send(
            {"type": "call_invite", "callId": CALL_ID, "peerId": "bob", "media": "audio",
             "sdp": offer}
        )  # fmt: skip
        frames: list[str] = []
        while True:  # the relay answers the invite before anything of the callee's comes
            frame = await peer.recv()
            frames.append(frame["type"])
            if frame["type"] == "call_ringing":
                break
            if frame["type"] in ("call_end", "error"):
                raise RuntimeError(f"the call did not ring: {frame}")
        await peer.trickle(candidates)

        async def read() -> None:
            while True:
                frame = await peer.recv()
                frames.append(frame["type"])
                if frame["type"] == "call_accept":
                    peer.remote_sdp_candidates = frame["sdp"].count("a=candidate:")
                    await peer.pc.setRemoteDescription(
                        RTCSessionDescription(sdp=frame["sdp"], type="answer")
                    )
                elif frame["type"] == "call_signal":
                    await peer.on_signal(frame["payload"])
                elif frame["type"] in ("call_end", "error"):
                    raise RuntimeError(f"the call ended early: {frame}")

        reader = asyncio.create_task(read())
        try:
            await peer.done
        finally:
            reader.cancel()
        result = {
            "received": received,
            "frames": frames,
            "signals_in": peer.signals_in,
            "sdp_candidates": peer.remote_sdp_candidates,
            "signals_out": len(candidates),
            "ice": peer.pc.iceConnectionState,
            "remote_hosts": peer.remote_hosts(),
            "channel": channel.readyState,
        }
        await peer.send({"type": "call_end", "callId": CALL_ID})
        await peer.pc.close()
        return result


async def callee(url: str) -> dict[str, Any]:
    async with websockets.connect(url) as ws:
        await auth(ws, "bob", "phone")
        print("ready", flush=True)
        peer = Peer(ws)
        received: list[str] = []
        frames: list[str] = []
        ice: list[str] = []

        @peer.pc.on("datachannel")
        def on_channel(channel: RTCDataChannel) -> None:
            @channel.on("message")
            def on_message(message: str) -> None:
                received.append(message)
                ice.append(peer.pc.iceConnectionState)  # before the caller hangs up
                channel.send("pong")

        while True:
            frame = await peer.recv()
            frames.append(frame["type"])
            if frame["type"] == "call_invite":
                peer.remote_sdp_candidates = frame["sdp"].count("a=candidate:")
                await peer.pc.setRemoteDescription(
                    RTCSessionDescription(sdp=frame["sdp"], type="offer")
                )
                await peer.pc.setLocalDescription(await peer.pc.createAnswer())
                answer, candidates = await peer.local_description()
                await peer.send({"type": "call_accept", "callId": CALL_ID, "sdp": answer})
                await peer.trickle(candidates)
            elif frame["type"] == "call_signal":
                await peer.on_signal(frame["payload"])
            elif frame["type"] == "call_end":
                result = {
                    "received": received,
                    "frames": frames,
                    "reason": frame.get("reason"),
                    "signals_in": peer.signals_in,
                    "sdp_candidates": peer.remote_sdp_candidates,
                    "ice": ice,
                    "remote_hosts": peer.remote_hosts(),
                }
                await peer.pc.close()
                return result
            elif frame["type"] == "error":
                raise RuntimeError(f"the relay refused a frame: {frame}")


def main() -> None:
    url, role = sys.argv[1], sys.argv[2]
    run = caller if role == "caller" else callee
    result = asyncio.run(asyncio.wait_for(run(url), TIMEOUT))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
