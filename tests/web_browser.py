"""Running the web chat's browser scenarios (tests/browser/*.mjs) from the tests: Node.js with
tests/browser's playwright-core, driving Debian's /usr/bin/chromium headless.

Without Chromium, Node.js or npm a browser test FAILS with the command that installs what is
missing (the README lists the system packages; .ci/run installs them); RELAY_SKIP_BROWSER=1
skips those tests deliberately.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from relay import Relay

BROWSER_DIR = Path(__file__).parent / "browser"
CHROMIUM = "/usr/bin/chromium"


def require_browser() -> str:
    """`node`, with tests/browser's playwright-core installed and /usr/bin/chromium present."""
    if os.environ.get("RELAY_SKIP_BROWSER") == "1":
        pytest.skip("RELAY_SKIP_BROWSER=1")
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("the browser test needs Node.js and npm (RELAY_SKIP_BROWSER=1 skips it)")
    if not os.path.exists(CHROMIUM):
        pytest.fail(
            f"{CHROMIUM} is missing: install it with `apt-get install chromium` "
            "(RELAY_SKIP_BROWSER=1 skips the browser test)"
        )
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=BROWSER_DIR,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            pytest.fail(f"`npm ci` in {BROWSER_DIR} failed:\n{result.stdout}\n{result.stderr}")
    return node


class Driver:
    """The node process driving Chromium: JSON steps on its stdout, cues on its stdin."""

    def __init__(self, process: trio.Process) -> None:
        assert process.stdout is not None and process.stdin is not None
        self.process = process
        self.buffer = bytearray()

    async def step(self, name: str) -> dict[str, Any]:
        stdout = self.process.stdout
        assert stdout is not None
        while b"\n" not in self.buffer:
            chunk = await stdout.receive_some(65536)
            if not chunk:
                raise AssertionError(f"browser driver ended before step {name!r}")
            self.buffer += chunk
        line, _, rest = bytes(self.buffer).partition(b"\n")
        self.buffer = bytearray(rest)
        step: dict[str, Any] = json.loads(line)
        assert step["step"] == name, f"expected step {name!r}, browser said {step}"
        return step

    async def cue(self, word: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(word.encode() + b"\n")

    async def done(self) -> None:
        """The scenario's last step: no page error, no CSP violation, nothing fetched from
        elsewhere."""
        done = await self.step("done")
        assert done["pageErrors"] == [] and done["cspViolations"] == [] and done["external"] == []


def page_url(relay: Relay) -> str:
    return "http" + relay.url.removeprefix("ws") + "/"


@asynccontextmanager
async def scenario(
    node: str, script: str, args: list[str], stderr_path: Path
) -> AsyncIterator[Driver]:
    """`node tests/browser/<script> <args>`; on exit it must have ended well (its stderr, kept
    in `stderr_path`, is the failure message otherwise)."""
    stderr = os.open(stderr_path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        process = await trio.lowlevel.open_process(
            [node, str(BROWSER_DIR / script), *args],
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
    assert process.returncode == 0, await trio.Path(stderr_path).read_text()
