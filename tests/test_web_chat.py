"""The web chat at `/`: served only when enabled, under its CSP, and working in a real browser.

The browser tests drive Debian's /usr/bin/chromium headless through playwright-core
(tests/browser/, run by tests/web_browser.py). Without Chromium they FAIL with the command that
installs it (the README lists the system packages the tests need; .ci/run installs them);
RELAY_SKIP_BROWSER=1 skips them deliberately. Files, encryption and calls in the web chat:
test_web_chat_files.py, test_web_chat_e2e.py, test_web_chat_calls.py.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import struct
import subprocess
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from support import RawWs, http_get, http_request, start_relay, ws_connect
from trio_websocket import WebSocketConnection
from web_browser import BROWSER_DIR, Driver, require_browser

from relay import Relay

#: the web chat's scripts besides chat.js (relay/web/)
SCRIPTS = ("/hpke.js", "/e2e.js", "/attachments.js", "/calls.js")


def response_head(raw: bytes) -> tuple[int, dict[str, str]]:
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(head[0].split(" ", 2)[1]), headers


async def raw_get(
    relay: Relay, path: str, host: str = "127.0.0.1"
) -> tuple[int, dict[str, str], bytes]:
    address = relay.address
    assert address is not None
    stream = await trio.open_tcp_stream("127.0.0.1", address.port)
    async with stream:
        await stream.send_all(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{address.port}\r\n\r\n".encode()
        )
        data = bytearray()
        while chunk := await stream.receive_some(65536):
            data += chunk
    status, headers = response_head(bytes(data))
    return status, headers, bytes(data).split(b"\r\n\r\n", 1)[1]


# --- HTTP ---------------------------------------------------------------------------------------


async def test_root_is_404_when_web_chat_is_off(nursery: trio.Nursery) -> None:
    relay = await start_relay(nursery)
    for path in ("/", "/index.html", "/chat.js", "/chat.css", *SCRIPTS):
        assert (await http_get(relay, path))[0] == 404, path


async def test_page_served_with_csp_when_enabled(nursery: trio.Nursery) -> None:
    relay = await start_relay(nursery, web_chat=True)
    address = relay.address
    assert address is not None
    status, headers, body = await raw_get(relay, "/")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert b'<script src="chat.js"' in body and int(headers["content-length"]) == len(body)
    csp = {d.split()[0]: d.split()[1:] for d in headers["content-security-policy"].split("; ")}
    assert csp["default-src"] == ["'none'"]
    assert csp["script-src"] == ["'self'"] and csp["style-src"] == ["'self'"]
    # pictures: the page's own, and the blob: URLs of files it fetched with its token
    assert csp["img-src"] == ["'self'", "blob:"]
    host = f"127.0.0.1:{address.port}"
    assert csp["connect-src"] == ["'self'", f"ws://{host}", f"wss://{host}"]
    assert headers["x-content-type-options"] == "nosniff"
    assert (await raw_get(relay, "/index.html"))[2] == body

    status, headers, js = await raw_get(relay, "/chat.js?v=1")
    assert (status, headers["content-type"]) == (200, "text/javascript; charset=utf-8")
    assert b"new WebSocket(" in js and b"innerHTML" not in js
    for path in SCRIPTS:
        status, headers, script = await raw_get(relay, path)
        assert (status, headers["content-type"]) == (200, "text/javascript; charset=utf-8")
        assert f'<script src="{path[1:]}" defer>'.encode() in body
        assert b"innerHTML" not in script and b"eval(" not in script, path
    status, headers, _ = await raw_get(relay, "/chat.css")
    assert (status, headers["content-type"]) == (200, "text/css; charset=utf-8")
    # A Host that is not a plain host[:port] never reaches the policy.
    _, headers, _ = await raw_get(relay, "/", host="evil; script-src *")
    assert "evil" not in headers["content-security-policy"]
    assert "connect-src 'self';" in headers["content-security-policy"]
    # Other methods on the page's paths: 405, as for /healthz.
    port = address.port
    status, _ = await http_request(port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert status == 405
    assert (await http_get(relay, "/other"))[0] == 404


async def test_websocket_on_root_still_works_with_web_chat(nursery: trio.Nursery) -> None:
    relay = await start_relay(nursery, web_chat=True)
    ws = await RawWs.connect(relay, "/")
    await ws.stream.aclose()
    async with ws_connect(relay.url + "/") as conn:
        await conn.send_message(json.dumps({"type": "auth", "userId": "u1"}))
        assert json.loads(await conn.get_message())["type"] == "auth_ok"


# --- the browser --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser_node() -> str:
    return require_browser()


class Bob:
    """The Python user: a trio-websocket connection with acks and a frame reader."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send_message(json.dumps(frame))

    async def expect(self, **fields: Any) -> dict[str, Any]:
        """The next frame whose fields include `fields` (other frames are passed over)."""
        while True:
            frame: dict[str, Any] = json.loads(await self.ws.get_message())
            if all(frame.get(k) == v for k, v in fields.items()):
                return frame

    async def say(self, id: str, text: str) -> int:
        await self.send(
            {
                "type": "message",
                "id": id,
                "senderId": "bob",
                "senderName": "Bob Py",
                "recipientId": "alice",
                "text": text,
                "timestamp": "2026-11-25T19:00:00Z",
            }
        )
        receipt = await self.expect(type="receipt", id=id)
        assert receipt["status"] == "sent"
        return int(receipt["seq"])


def png_pixels(png: Path) -> list[bytes]:
    """The pixels of an 8-bit, non-interlaced PNG (what Chromium's screenshots are), each as
    its bytes (RGB or RGBA), read with the standard library only."""
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, bytearray()
    width = height = channels = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and interlace == 0 and colour in (2, 6), (depth, colour, interlace)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
    raw = zlib.decompress(bytes(idat))
    stride = width * channels
    previous = bytearray(stride)
    pixels = []
    for y in range(height):
        start = y * (stride + 1)
        kind = raw[start]
        row = bytearray(raw[start + 1 : start + 1 + stride])
        if kind == 1:
            for i in range(channels, stride):
                row[i] = (row[i] + row[i - channels]) & 0xFF
        elif kind == 2:
            row = bytearray((a + b) & 0xFF for a, b in zip(row, previous, strict=True))
        elif kind == 3:
            for i in range(stride):
                left = row[i - channels] if i >= channels else 0
                row[i] = (row[i] + ((left + previous[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                a = row[i - channels] if i >= channels else 0
                b = previous[i]
                c = previous[i - channels] if i >= channels else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                row[i] = (row[i] + pred) & 0xFF
        pixels.extend(bytes(row[x : x + channels]) for x in range(0, stride, channels))
        previous = row
    return pixels


def looks_rendered(png: Path) -> int:
    """How many distinct colours the screenshot has (a blank page has one or two)."""
    return len(set(png_pixels(png)[::7]))


@asynccontextmanager
async def browser(node: str, relay: Relay, tmp: Path, scenario: str) -> AsyncIterator[Driver]:
    """The node driver running `scenario` against `relay`; on exit it must have ended well."""
    stderr = os.open(tmp / "driver.stderr", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        process = await trio.lowlevel.open_process(
            [
                node,
                str(BROWSER_DIR / "web_chat.mjs"),
                "http" + relay.url.removeprefix("ws") + "/",
                str(tmp / "chat.png"),
                str(tmp / "profile"),
                scenario,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=BROWSER_DIR,
        )
    finally:
        os.close(stderr)
    try:
        yield Driver(process)
    except BaseException:
        process.kill()
        raise
    finally:
        await process.wait()
    assert process.returncode == 0, (tmp / "driver.stderr").read_text()


async def connect_bob(relay: Relay, ws: WebSocketConnection, **auth: Any) -> Bob:
    bob = Bob(ws)
    await bob.send({"type": "auth", "userId": "bob", "userName": "Bob Py", **auth})
    await bob.expect(type="auth_ok")
    return bob


async def test_browser_chat_with_python_user(
    nursery: trio.Nursery, browser_node: str, tmp_path: Path
) -> None:
    relay = await start_relay(nursery, web_chat=True)
    tmp = tmp_path  # chat.png (the screenshot) and driver.stderr stay for a look afterwards
    shot = tmp / "chat.png"
    first = "<b>hello</b> & <img src=x onerror=alert(1)> from python"
    try:
        with trio.fail_after(20):
            async with ws_connect(relay.url + "/") as ws:
                bob = await connect_bob(relay, ws, deviceId="py-bob", acks=True)
                await bob.say("py-1", first)
                async with browser(browser_node, relay, tmp, "chat") as driver:
                    await run_scenario(bob, driver, first)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert looks_rendered(shot) > 20
    finally:
        shutil.rmtree(tmp / "profile", ignore_errors=True)


async def test_browser_over_tls_pages_history_and_lists_groups(
    nursery: trio.Nursery, browser_node: str, certificate: tuple[str, str], tmp_path: Path
) -> None:
    cert, key = certificate
    relay = await start_relay(nursery, web_chat=True, certfile=cert, keyfile=key)
    address = relay.address
    assert address is not None and relay.url.startswith("wss://")
    tls = ssl.create_default_context(cafile=cert)
    tmp = tmp_path  # chat.png (the screenshot) and driver.stderr stay for a look afterwards
    try:
        with trio.fail_after(20):
            async with (
                ws_connect(relay.url + "/", ssl_context=tls) as ws,
                ws_connect(relay.url, ssl_context=tls) as phone,
            ):
                bob = await connect_bob(relay, ws)
                # alice's phone receives all 120, so her new browser device gets none as backlog.
                await phone.send_message(json.dumps({"type": "auth", "userId": "alice"}))
                for n in range(1, 121):
                    await bob.say(f"p{n}", f"m{n}")
                await bob.expect(type="receipt", status="delivered", seq=120)
                await bob.send(
                    {
                        "type": "group_create",
                        "groupId": "runners",
                        "name": "Runners",
                        "members": ["alice", "bob"],
                    }
                )
                await bob.expect(type="group", groupId="runners")
                async with browser(browser_node, relay, tmp, "paging") as driver:
                    step = await driver.step("listed")
                    assert step["keys"] == ["g:runners", "u:bob"]
                    assert (step["group"], step["unread"], step["preview"]) == (
                        "# Runners",
                        "120",
                        "m120",
                    )
                    want = [f"m{n}" for n in range(1, 121)]
                    assert (await driver.step("page1"))["texts"] == want[-50:]
                    assert (await driver.step("page2"))["texts"] == want[-100:]
                    step = await driver.step("page3")
                    assert step["texts"] == want
                    # Served over https, the page reached the relay over wss.
                    assert step["socket"] == f"wss://127.0.0.1:{address.port}/"
                    read = await bob.expect(type="receipt", status="read")
                    assert (read["seq"], read["userId"]) == (120, "alice")
                    await driver.step("done")
    finally:
        shutil.rmtree(tmp / "profile", ignore_errors=True)


async def run_scenario(bob: Bob, driver: Driver, first: str) -> None:
    # The conversation list: one unread message from bob, with its preview.
    step = await driver.step("listed")
    assert (step["unread"], step["preview"]) == ("1", first)
    await bob.expect(type="status", status="online", userId="alice")

    await bob.say("py-2", "second")
    await driver.cue("sent2")
    assert (await driver.step("unread2"))["unread"] == "2"

    # Opening the conversation: both messages as plain text, bob online, a read receipt.
    step = await driver.step("opened")
    assert step["texts"] == [first, "second"]
    assert step["htmlElementsInMessages"] == 0
    assert (step["title"], step["presence"], step["unreadBadges"]) == ("bob", "online", 0)
    read = await bob.expect(type="receipt", status="read")
    assert (read["peerId"], read["userId"], read["seq"], read["id"]) == (
        "alice",
        "alice",
        2,
        "py-2",
    )

    await bob.send({"type": "typing", "recipientId": "alice", "state": "start"})
    await driver.cue("typing")
    await driver.step("typing-shown")

    # alice types (start, then stop as she sends) and her answer reaches bob; bob's read
    # receipt turns her tick to read.
    step = await driver.step("sent")
    await bob.expect(type="typing", userId="alice", state="start")
    await bob.expect(type="typing", userId="alice", state="stop")
    message = await bob.expect(type="message", senderId="alice")
    assert (message["id"], message["text"], message["recipientId"]) == (
        step["id"],
        "hi from the browser",
        "bob",
    )
    assert message["senderName"] == "Alice Web" and message["seq"] == 3
    await bob.send({"type": "receipt", "peerId": "alice", "seq": message["seq"], "status": "read"})
    await driver.cue("read")
    step = await driver.step("read")
    assert step["id"] == message["id"] and step["tick"] == "✓✓"

    # Sent while the connection was down: pending, then delivered once, with the same id.
    step = await driver.step("resent")
    assert step["pendingStatus"] == "pending"
    assert step["state"]["connected"] is True and step["state"]["pending"] == 0
    again = await bob.expect(type="message", senderId="alice")
    assert (again["id"], again["text"], again["seq"]) == (step["id"], "sent while offline", 4)

    done = await driver.step("done")
    assert done["pageErrors"] == [] and done["cspViolations"] == [] and done["external"] == []
