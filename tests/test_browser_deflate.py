"""permessage-deflate with a real browser: Chromium decodes a compressed 50-message history
page from the relay.

Chromium (Debian's /usr/bin/chromium, driven headless through playwright-core in
tests/browser/, found by tests/web_browser.py) always offers `permessage-deflate;
client_max_window_bits`. Without Chromium the test FAILS with the command that installs it;
RELAY_SKIP_BROWSER=1 skips it deliberately.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
from support import start_relay, ws_connect
from web_browser import BROWSER_DIR, page_url, require_browser


@pytest.fixture(scope="module")
def browser_node() -> str:
    return require_browser()


TEXT = "message {i}: " + "the quick brown fox jumps over the lazy dog " * 8


async def test_chromium_decodes_a_compressed_history_page(
    nursery: trio.Nursery, browser_node: str, tmp_path: Path
) -> None:
    relay = await start_relay(nursery, web_chat=True)
    stats = relay.metrics.stats
    async with ws_connect(relay.url) as alice:  # trio-websocket: offers no compression
        await alice.send_message(json.dumps({"type": "auth", "userId": "alice"}))
        assert json.loads(await alice.get_message())["type"] == "auth_ok"
        for i in range(50):
            frame = {
                "type": "message",
                "id": f"m{i}",
                "recipientId": "bob",
                "text": TEXT.format(i=i),
            }
            await alice.send_message(json.dumps(frame))
        receipts = 0
        with trio.fail_after(10):
            while receipts < 50:
                answer = json.loads(await alice.get_message())
                receipts += answer.get("type") == "receipt" and answer.get("status") == "sent"
    assert stats.frames_compressed == 0
    bytes_before = stats.bytes_out
    # Chromium signs in as alice: a new device of the sender has no backlog to receive (her
    # own messages), so what the relay writes to it is auth_ok, the page and the close

    with trio.fail_after(60):
        done = await trio.run_process(
            [
                browser_node,
                str(BROWSER_DIR / "deflate.mjs"),
                page_url(relay),
                str(tmp_path / "profile"),
                "alice",
                "bob",
            ],
            cwd=BROWSER_DIR,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    lines = done.stdout.decode().strip().splitlines()
    assert done.returncode == 0 and lines, (done.stdout, done.stderr.decode()[-2000:])
    result = json.loads(lines[-1])
    assert result["extensions"] == (
        "permessage-deflate; server_no_context_takeover; client_max_window_bits=12"
    )
    assert result["messages"] == [{"id": f"m{i}", "text": TEXT.format(i=i)} for i in range(50)]
    assert result["size"] > 20000
    # the page went out compressed: one compression, and the whole WebSocket session of the
    # browser (auth_ok, the page, the close) took a fraction of the page's size on the wire
    assert stats.frames_compressed == 1
    assert stats.bytes_out - bytes_before < result["size"] / 5
