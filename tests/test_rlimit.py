"""`relay serve` raises its descriptor limit (one per connection), or says what to raise.

Each case runs in a child process whose limits the test lowers first (an unprivileged
process may lower its hard limit, never raise it), so the test process keeps its own.
"""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

from relay.rlimit import RESERVED


def _limited(soft: int, hard: int) -> object:
    def setup() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return setup


def _soft_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no 'Max open files' line")


def test_soft_limit_is_raised_to_the_hard_limit_silently_when_it_is_enough() -> None:
    code = (
        "import resource; from relay.rlimit import raise_descriptor_limit as r; "
        "print(r(1000)); print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        preexec_fn=_limited(256, 4096),  # type: ignore[arg-type]
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == ["None", "4096"]


def test_a_hard_limit_below_max_connections_is_one_line_naming_what_to_raise(
    tmp_path: Path,
) -> None:
    hard = 2000
    process = subprocess.Popen(
        [sys.executable, "-m", "relay", "serve", "--memory", "--port", "0"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_limited(512, hard),  # type: ignore[arg-type]
    )
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 20
        line = ""
        while "running on" not in line and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line and process.poll() is not None:
                break
        assert "running on" in line, process.communicate()[1]
        # the soft limit was raised as far as it can go
        assert _soft_limit(process.pid) == hard
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
    stderr = process.communicate()[1]
    warnings = [ln for ln in stderr.splitlines() if "descriptor limit" in ln]
    assert len(warnings) == 1, stderr
    assert f"allows about {hard - RESERVED:,} connections" in warnings[0]
    assert "max_connections (100,000)" in warnings[0] and "LimitNOFILE=" in warnings[0]
    assert "Traceback" not in stderr
