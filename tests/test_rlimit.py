"""`relay serve` raises its descriptor limit (one per connection), or says what to raise.

Each case runs in a child process whose limits the test lowers first (an unprivileged
process may lower its hard limit, never raise it), so the test process keeps its own.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

from support import served

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
    command = [sys.executable, "-m", "relay", "serve", "--memory", "--port", "0"]
    with served(command, cwd=tmp_path, preexec_fn=_limited(512, hard)) as relay:
        # the soft limit was raised as far as it can go
        assert _soft_limit(relay.process.pid) == hard
    stderr = relay.stderr
    warnings = [ln for ln in stderr.splitlines() if "descriptor limit" in ln]
    assert len(warnings) == 1, stderr
    assert f"allows about {hard - RESERVED:,} connections" in warnings[0]
    assert "max_connections (100,000)" in warnings[0] and "LimitNOFILE=" in warnings[0]
    assert "Traceback" not in stderr
