"""Where a server's time goes: py-spy samples of the server over the measured window.

Invariant: sampling is non-blocking (py-spy --nonblocking) and runs on the load generator's
core, so it perturbs the server as little as py-spy can; runs that were profiled say so in the
JSON. The raw collapsed stacks are kept next to the results for flame graphs.
"""

from __future__ import annotations

import collections
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

_LINE = re.compile(r":\d+\)$")


def available() -> str | None:
    """py-spy's path: beside this interpreter first (`pip install py-spy` into the venv that
    runs the bench puts it there, on PATH or not), else on PATH; None when neither has it."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("py-spy")


def start(pid: int, seconds: float, out: Path, rate: int = 250) -> subprocess.Popen[bytes]:
    """Start sampling `pid` for `seconds` (rounded up) into a collapsed-stack file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    exe = available() or "py-spy"
    return subprocess.Popen(
        [
            exe,
            "record",
            "-p",
            str(pid),
            "-d",
            str(max(1, math.ceil(seconds))),
            "-r",
            str(rate),
            "-f",
            "raw",
            "-o",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def summarise(path: Path, top: int = 20) -> dict[str, Any]:
    """Self and inclusive shares per function from a py-spy raw (collapsed) file."""
    self_t: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        # function level: "f (file.py:12)" -> "f (file.py)"; the raw file keeps the lines
        frames = [_LINE.sub(")", f) for f in stack.split(";")]
        self_t[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    if total == 0:
        return {"samples": 0}
    return {
        "samples": total,
        "self": [[round(n / total, 4), f] for f, n in self_t.most_common(top)],
        "inclusive": [[round(n / total, 4), f] for f, n in incl.most_common(top * 2)],
    }
