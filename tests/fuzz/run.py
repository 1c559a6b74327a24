"""Run the fuzz harnesses of tests/fuzz/ for a bounded time or number of executions.

    python tests/fuzz/run.py                       # each harness for 10 s
    python tests/fuzz/run.py --seconds 600 core    # one harness, longer
    python tests/fuzz/run.py --runs 100000 frames  # a number of executions instead
    python tests/fuzz/run.py --work /tmp/fz core   # keep what it finds in /tmp/fz/core
    python tests/fuzz/run.py core --replay crash-…  # inputs through a harness, with traceback
    python tests/fuzz/run.py --write-seeds         # (re)write the seed corpus from the harnesses

Each harness runs in its own process (atheris, on libFuzzer), reading the committed seeds of
tests/fuzz/corpus/<harness>/ and writing what it finds to a work directory (a temporary one
unless --work), never to the committed corpus. It prints one line per harness with its
executions; a failure prints the harness's report and the path of the input that caused it,
and the exit status is 1. The harness names are `frames` (fuzz_frames.py) and `core`
(fuzz_core.py).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
CORPUS = HERE / "corpus"
HARNESSES = ("frames", "core")
# inputs longer than this are not tried: the longest seed is under 2 kB, and a long input
# mostly slows every execution down
MAX_LEN = 16384
_DONE = re.compile(r"Done (\d+) runs in (\d+) second")
_UNIT = re.compile(r"(?:Test unit|artifact_prefix.*?; Test unit) written to (\S+)")


def env() -> dict[str, str]:
    """The harness's environment: tests/ importable (fuzz.script, support)."""
    out = dict(os.environ)
    out["PYTHONPATH"] = str(TESTS) + (
        os.pathsep + out["PYTHONPATH"] if out.get("PYTHONPATH") else ""
    )
    return out


def fuzz(name: str, work: Path, bound: list[str]) -> bool:
    """Run one harness; print its line; True when it found no failure."""
    found = work / name
    found.mkdir(parents=True, exist_ok=True)
    artifacts = work / f"{name}-artifacts"
    artifacts.mkdir(exist_ok=True)
    log_path = work / f"{name}.log"
    seeds = CORPUS / name
    cmd = [
        sys.executable,
        str(HERE / "launch.py"),
        name,
        str(found),
        str(seeds),
        *bound,
        f"-max_len={MAX_LEN}",
        f"-artifact_prefix={artifacts}/",
        "-timeout=30",
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
    ]
    started = time.monotonic()
    with open(log_path, "wb") as log:
        code = subprocess.run(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env(), check=False
        ).returncode
    elapsed = time.monotonic() - started
    text = log_path.read_text(errors="replace")
    done = _DONE.search(text)
    runs = int(done.group(1)) if done else 0
    n_seeds = sum(1 for _ in seeds.iterdir())
    n_found = sum(1 for _ in found.iterdir())
    if code == 0 and done:
        print(
            f"fuzz {name}: {runs:,} executions in {elapsed:.0f} s ({runs / elapsed:,.0f}/s), "
            f"{n_seeds} seeds, {n_found} new inputs in {found}, no failure",
            flush=True,
        )
        return True
    unit = _UNIT.search(text)
    print(f"fuzz {name}: FAILED (exit {code}) after {elapsed:.0f} s; its report:", flush=True)
    print(_report(text), flush=True)
    if unit:
        print(
            f"the input: {unit.group(1)}\n"
            f"  replay it: python tests/fuzz/run.py {name} --replay {unit.group(1)}\n"
            f"  keep it as a regression seed once fixed: cp {unit.group(1)} {seeds}/",
            flush=True,
        )
    print(f"full log: {log_path}", flush=True)
    return False


def _report(text: str) -> str:
    """The part of a libFuzzer log that says what failed (the Python traceback onwards)."""
    lines = text.splitlines()
    start = next(
        (i for i, ln in enumerate(lines) if "Uncaught Python exception" in ln or "ERROR:" in ln),
        max(0, len(lines) - 40),
    )
    return "\n".join(lines[start : start + 60])


def replay(name: str, paths: list[Path]) -> bool:
    """Each input through its harness's check, in this process (no atheris needed)."""
    sys.path.insert(0, str(TESTS))
    check = importlib.import_module(f"fuzz.fuzz_{name}").check
    ok = True
    for path in paths:
        try:
            check(path.read_bytes())
        except Exception:
            import traceback

            print(f"{path}: FAILED", flush=True)
            traceback.print_exc()
            ok = False
        else:
            print(f"{path}: passes", flush=True)
    return ok


def write_seeds() -> None:
    sys.path.insert(0, str(TESTS))
    for name in HARNESSES:
        target = CORPUS / name
        target.mkdir(parents=True, exist_ok=True)
        seeds = importlib.import_module(f"fuzz.fuzz_{name}").seeds()
        for file_name, data in seeds.items():
            (target / file_name).write_bytes(data)
        print(f"{name}: {len(seeds)} seeds in {target}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python tests/fuzz/run.py", description=__doc__.splitlines()[0]
    )
    p.add_argument("harness", nargs="*", help=f"{', '.join(HARNESSES)} (default: all)")
    bound = p.add_mutually_exclusive_group()
    bound.add_argument("--seconds", type=float, help="time per harness (default 10)")
    bound.add_argument("--runs", type=int, help="executions per harness")
    p.add_argument("--work", type=Path, help="keep the inputs found and the logs here")
    p.add_argument("--replay", type=Path, nargs="+", help="input files to run through a harness")
    p.add_argument("--write-seeds", action="store_true", help="write the seed corpus")
    args = p.parse_args(argv)
    names = args.harness or list(HARNESSES)
    unknown = sorted(set(names) - set(HARNESSES))
    if unknown:
        p.error(f"unknown harness {', '.join(unknown)}: the harnesses are {', '.join(HARNESSES)}")
    if args.write_seeds:
        write_seeds()
        return 0
    if args.replay:
        if len(names) != 1:
            p.error("--replay needs one harness name: python tests/fuzz/run.py core --replay FILE")
        return 0 if replay(names[0], args.replay) else 1
    if importlib.util.find_spec("atheris") is None:
        print(
            "atheris is not installed: pip install -e '.[test]' (or pip install atheris)",
            flush=True,
        )
        return 1
    limit = [f"-runs={args.runs}"] if args.runs else [f"-max_total_time={int(args.seconds or 10)}"]
    work = args.work or Path(tempfile.mkdtemp(prefix="relay-fuzz-"))
    results = [fuzz(name, work, limit) for name in names]
    if all(results) and args.work is None:
        shutil.rmtree(work)
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
