"""The load generator's own process: `python -m bench.loadgen` < config.json > result.json.

It reads one JSON config on stdin, runs bench._loadgen.LoadGen on it and writes one JSON object
on stdout (`{"error": ...}` when the run failed). Progress lines go to stderr.

Invariant: CPU and memory figures are taken from the OS at exactly the instants the compiled
loop calls `snapshot()` (the measured window's edges): this process's user+system time from
os.times(), the server's utime+stime and VmRSS from /proc/<server_pid>, and for both the time
their main thread waited for a CPU (/proc/<pid>/schedstat): other load on the machine; and
for each side's pinned core the time the hypervisor ran something else instead (steal, from
/proc/stat): on a shared virtual machine this, not the server, can set the latency floor.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def raise_nofile_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def proc_cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of a whole process (all its threads), in seconds: its own code's CPU
    and the kernel's on its behalf (system calls: for a relay, mostly the sockets')."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a whole process (all its threads), in seconds."""
    user, system = proc_cpu_times(pid)
    return user + system


def runqueue_wait_s(pid: int | str) -> float:
    """Time the process's main thread spent runnable but waiting for a CPU (schedstat)."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def core_steal_s(cpu: int | None, stat_path: str = "/proc/stat") -> float:
    """Steal time of one CPU (of the whole machine when `cpu` is None), in seconds: time its
    virtual CPU was ready but the hypervisor ran something else. 0 where not reported."""
    name = b"cpu " if cpu is None else f"cpu{cpu} ".encode()
    try:
        with open(stat_path, "rb") as f:
            for line in f:
                if line.startswith(name):
                    fields = line.split()
                    return int(fields[8]) / _CLK_TCK if len(fields) > 8 else 0.0
    except (OSError, ValueError):
        pass
    return 0.0


def proc_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def make_snapshot(
    server_pid: int,
    on_first: Any = None,
    server_cpu: int | None = None,
    loadgen_cpu: int | None = None,
    server_pids: list[int] | None = None,
) -> Any:
    """The window-edge snapshot; with `server_pids` (the nodes of a cluster) the server's CPU,
    RSS and run-queue wait are the sums over those processes."""
    calls = [on_first]
    pids = list(server_pids) if server_pids else [server_pid]

    def snapshot() -> dict[str, float]:
        if calls[0] is not None:
            calls.pop()()  # the window opens: e.g. start the profiler
            calls.append(None)
        t = os.times()
        server = [proc_cpu_times(p) for p in pids]
        return {
            "t": time.monotonic(),
            "loadgen_cpu_s": t.user + t.system,
            "server_cpu_s": sum(user + system for user, system in server),
            "server_sys_s": sum(system for _user, system in server),
            "server_rss_kb": sum(proc_rss_kb(p) for p in pids),
            "server_runq_s": sum(runqueue_wait_s(p) for p in pids),
            "loadgen_runq_s": runqueue_wait_s("self"),
            "server_steal_s": core_steal_s(server_cpu),
            "loadgen_steal_s": core_steal_s(loadgen_cpu),
        }

    return snapshot


def main() -> int:
    cfg = json.loads(sys.stdin.read())
    limit = raise_nofile_limit()
    if cfg.get("cpu") is not None:
        os.sched_setaffinity(0, {int(cfg["cpu"])})
    if cfg["clients"] + 64 > limit:
        print(json.dumps({"error": f"{cfg['clients']} clients need more than ulimit -n {limit}"}))
        return 1

    try:
        from bench._loadgen import LoadGen
    except ImportError as exc:
        # compiled in the checkout by `python -m bench`, which runs this process
        print(json.dumps({"error": f"bench._loadgen is not built ({exc}): run python -m bench"}))
        return 1

    def progress(msg: str) -> None:
        print(f"      {msg}", file=sys.stderr, flush=True)

    profiler: list[subprocess.Popen[bytes]] = []
    on_first = None
    if cfg.get("profile"):
        from bench import profiling

        seconds = float(cfg.get("duration", cfg.get("hold", 1.0)))

        def on_first() -> None:
            profiler.append(profiling.start(int(cfg["server_pid"]), seconds, Path(cfg["profile"])))

    try:
        gen = LoadGen(cfg, progress=progress)
        result = gen.run(
            make_snapshot(
                int(cfg["server_pid"]),
                on_first,
                cfg.get("server_cpu"),
                cfg.get("cpu"),
                [int(p) for p in cfg.get("server_pids") or []],
            )
        )
    except (OSError, RuntimeError, ValueError) as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    finally:
        for p in profiler:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    result["nofile_limit"] = limit
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
