"""The servers under test: how to start each one, find its port, pin it, and stop it.

Invariants:
- A server runs in its own process, pinned (with every thread it will ever start) to the
  server core by setting the affinity in the child before exec; its soft RLIMIT_NOFILE is
  raised to the hard limit the same way.
- A server is ready when a `ws://HOST:PORT` URL appears in its output; its log file keeps
  everything it printed, for the report of a failed run.
- The relay runs with its rate limits raised so the benchmark measures the relay, not its
  rate limiter; the exact flags and environment are part of every result.
"""

from __future__ import annotations

import functools
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "bench" / "baselines" / "node-ws"
URL_RE = re.compile(rb"ws://([0-9.]+):(\d+)")

# High enough that no benchmark message is ever refused by the relay's token buckets.
RELAY_RATE_LIMIT = 1_000_000_000


class ServerError(RuntimeError):
    """A server could not be started or died while it was measured."""


@dataclass
class ServerSpec:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = ROOT
    note: str = ""


@dataclass
class RunningServer:
    spec: ServerSpec
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _child_setup(cpu: int | None) -> Callable[[], None]:
    def setup() -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and hard > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})

    return setup


def start(
    spec: ServerSpec, log_path: Path, cpu: int | None, timeout: float = 30.0
) -> RunningServer:
    """Start a server and wait until it prints its ws:// URL."""
    env = dict(os.environ)
    env.update(spec.env)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "wb")  # noqa: SIM115 - the child owns it for its whole life
    proc = subprocess.Popen(
        spec.argv,
        cwd=spec.cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=_child_setup(cpu),
    )
    log.close()
    deadline = time.monotonic() + timeout
    while True:
        m = URL_RE.search(log_path.read_bytes())
        if m:
            return RunningServer(spec, proc, int(m.group(2)), log_path)
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise ServerError(
                f"{spec.name} exited with {proc.returncode} before listening:\n{tail}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise ServerError(f"{spec.name} printed no ws:// URL within {timeout:.0f} s")
        time.sleep(0.02)


@functools.cache
def _relay_help() -> str:
    try:
        out = subprocess.run(
            [sys.executable, "-m", "relay", "serve", "--help"],
            cwd=ROOT,
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (out.stdout + out.stderr).decode(errors="replace")


def relay_spec(db_path: str | None) -> ServerSpec:
    """`python -m relay serve` on a free port, in-memory store or SQLite at db_path.

    Rate limits are raised by flag when the CLI has the flag, and always through the
    environment (RELAY_<FIELD>)."""
    help_text = _relay_help()
    argv = [sys.executable, "-m", "relay", "serve", "--host", "127.0.0.1", "--port", "0"]
    argv += ["--db", db_path] if db_path is not None else ["--memory"]
    limits = {
        "--rate-limit-messages": str(RELAY_RATE_LIMIT),
        "--rate-limit-burst": str(RELAY_RATE_LIMIT),
    }
    for flag, value in limits.items():
        if flag in help_text:
            argv += [flag, value]
    env = {
        "RELAY_RATE_LIMIT_MESSAGES": str(RELAY_RATE_LIMIT),
        "RELAY_RATE_LIMIT_BURST": str(RELAY_RATE_LIMIT),
        # no line per connection (INFO): the idle scenario opens 10,000 of them
        "RELAY_LOG_LEVEL": "warning",
    }
    name = "relay" if db_path is None else "relay-sqlite"
    note = (
        "rate limits raised to 1e9 msg/s, burst 1e9 ("
        + ", ".join(f for f in limits if f in help_text)
        + (" + " if any(f in help_text for f in limits) else "")
        + "RELAY_RATE_LIMIT_* env)"
    )
    return ServerSpec(name, argv, env=env, note=note)


def relay_no_compression_spec() -> ServerSpec:
    """The relay as relay_spec(None) has it, with permessage-deflate off (--no-compression)."""
    spec = relay_spec(None)
    return ServerSpec(
        "relay-no-compression",
        [*spec.argv, "--no-compression"],
        env=spec.env,
        note=spec.note + "; --no-compression",
    )


def node_spec() -> tuple[ServerSpec | None, str]:
    """The node-ws baseline, installing its lock-pinned dependencies when they are missing.
    Returns (None, reason) when it cannot run here."""
    node = shutil.which("node")
    if node is None:
        return None, "node not found on PATH"
    if not (NODE_DIR / "node_modules" / "ws").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            return None, "npm not found on PATH (needed once for `npm ci`)"
        print(f"  node-ws: node_modules missing, running npm ci in {NODE_DIR}", flush=True)
        res = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, capture_output=True, check=False
        )
        if res.returncode != 0:
            raise ServerError(
                "npm ci failed:\n" + (res.stdout + res.stderr).decode(errors="replace")
            )
    version = (
        subprocess.run([node, "--version"], capture_output=True, check=False)
        .stdout.decode()
        .strip()
    )
    spec = ServerSpec(
        "node-ws",
        [node, str(NODE_DIR / "server.js"), "--host", "127.0.0.1", "--port", "0"],
        note=f"node {version}, ws (package-lock.json)",
    )
    return spec, ""


def trio_spec() -> ServerSpec:
    return ServerSpec(
        "trio-websocket",
        [sys.executable, "-m", "bench.baselines.trio_ws", "--host", "127.0.0.1", "--port", "0"],
        note="trio-websocket, a task per connection",
    )


def null_spec() -> ServerSpec:
    return ServerSpec(
        "null",
        [sys.executable, "-m", "bench.nullrelay"],
        note="calibration: C server with no store or validation (the load generator's ceiling)",
    )
