"""`python -m bench`: run the load scenarios against relay and its baselines, check the budgets.

Each (scenario, server) run starts a fresh server pinned to one core (--quick and
--reuse-servers start each server once and run every scenario against it) and a fresh compiled
load generator process pinned to another, measures one window, and stops both. Repeats are
interleaved (every scenario and server once, then again) and summarised by their median.

Exit status: 0 when every run produced its figures and every budget passed (or --no-budgets);
1 when a run failed; 2 when a budget was missed.

`python -m bench soak` is the soak test instead (bench/soak.py): minutes of mixed traffic
against one relay process, its memory sampled each minute.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import budgets as budgets_mod
from bench import cluster, mix, profiling, report, scenarios, servers, storm
from bench import search as search_mod

ROOT = servers.ROOT
RESULTS = ROOT / "bench" / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__.splitlines()[0],
        epilog="python -m bench soak [--minutes 30] ...: the soak test (python -m bench soak -h); "
        "python -m bench api: the HTTP API against WebSocket (python -m bench api -h)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="every scenario briefly with small sizes (checks the harness end to end)",
    )
    p.add_argument(
        "--scenarios",
        default=",".join(scenarios.ALL_SCENARIOS),
        help="comma-separated subset of " + ",".join(scenarios.ALL_SCENARIOS) + " (all by default)",
    )
    p.add_argument(
        "--servers",
        default=",".join(
            (
                *scenarios.BASE_SERVERS,
                "relay-sqlite",
                "relay-no-compression",
                *scenarios.CLUSTER_SERVERS,
            )
        ),
        help="comma-separated subset of relay,node-ws,trio-websocket,relay-sqlite,"
        "relay-no-compression (the deflate scenario's other half), relay-postgres,relay-cluster "
        "(the cluster scenario: one node on PostgreSQL, three nodes on PostgreSQL and Redis); "
        "`null` (a C "
        "server that does nothing else) measures the load generator's own ceiling",
    )
    p.add_argument(
        "--no-floor",
        action="store_true",
        help="do not measure the `null` server in the rate scenario (by default it runs there "
        "as this machine's latency floor, named next to the latency budgets)",
    )
    p.add_argument("--repeat", type=int, default=1, help="runs per scenario and server (median)")
    p.add_argument("--duration", type=float, help="measured window per run, s (5; quick 0.6)")
    p.add_argument("--warmup", type=float, help="warm-up before the window, s (1; quick 0.2)")
    p.add_argument("--drain", type=float, help="wait for in-flight messages after, s (2)")
    p.add_argument("--clients", type=int, help="pairwise/durable clients (100; quick 10)")
    p.add_argument("--inflight", type=int, help="pairwise messages in flight per client (16)")
    p.add_argument("--rates", help="rate scenario offered msg/s, comma-separated (20000,40000)")
    p.add_argument("--rate-clients", type=int, help="rate scenario clients (100)")
    p.add_argument(
        "--sparse-connections", help="sparse scenario connection counts, comma-separated"
    )
    p.add_argument(
        "--connection-counts", help="connections scenario connection counts, comma-separated"
    )
    p.add_argument("--c100k-connections", type=int, help="c100k scenario connections (100000)")
    p.add_argument("--fanout-members", type=int, help="fan-out group size (1000)")
    p.add_argument("--fanout-inflight", type=int, help="fan-out messages in flight (4)")
    p.add_argument("--idle-connections", type=int, help="idle connections (10000)")
    p.add_argument("--idle-hold", type=float, help="idle: hold before measuring RSS, s (2)")
    p.add_argument("--text-bytes", type=int, help="message text length (100)")
    p.add_argument(
        "--history-messages", type=int, help="deflate: messages in the history page (50)"
    )
    p.add_argument(
        "--search-messages",
        type=int,
        help="search scenario: messages stored before the relay starts (1000000; quick 5000)",
    )
    p.add_argument(
        "--search-rate",
        type=float,
        help="search@searching: searches/s, an open loop over the searching users (100)",
    )
    p.add_argument(
        "--cluster-rate", type=float, help="cluster scenario offered msg/s (500; quick 200)"
    )
    p.add_argument(
        "--cluster-clients", type=int, help="cluster scenario clients, in pairs (60; quick 12)"
    )
    p.add_argument(
        "--reuse-servers",
        action="store_true",
        help="start each server once per repeat instead of once per scenario (--quick does)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="sample relay servers with py-spy over each measured window (figures perturbed)",
    )
    p.add_argument("--no-budgets", action="store_true", help="report budgets, do not enforce them")
    p.add_argument("--no-chart", action="store_true", help="do not draw the PNG chart")
    p.add_argument("--json", type=Path, help="where to write the JSON (bench/results/<ts>.json)")
    p.add_argument("--budgets", type=Path, default=budgets_mod.BUDGETS_PATH)
    return p.parse_args(argv)


def say(msg: str) -> None:
    print(msg, flush=True)


LOADGEN_PYX = ROOT / "bench" / "_loadgen.pyx"
# What `python -m bench` runs to compile the load generator in the checkout (cwd ROOT): the
# same compiler directives as the relay's fast path in setup.py, which builds only that.
_BUILD_LOADGEN = """
import sys
from Cython.Build import cythonize
from setuptools import Extension, setup
setup(
    name="relay-bench-loadgen",
    script_args=["build_ext", "--inplace", "--build-temp", sys.argv[1], "--build-lib", sys.argv[1]],
    ext_modules=cythonize(
        [Extension("bench._loadgen", ["bench/_loadgen.pyx"])],
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
        quiet=True,
    ),
)
"""


def loadgen_is_current() -> bool:
    """Whether bench._loadgen is compiled for this interpreter and not older than its source."""
    spec = importlib.util.find_spec("bench._loadgen")
    if spec is None or spec.origin is None or not spec.origin.endswith(".so"):
        return False
    return os.stat(spec.origin).st_mtime >= LOADGEN_PYX.stat().st_mtime


def missing_for_build() -> str | None:
    """What this machine lacks to compile the load generator, in words; None when nothing."""
    for module, package in (("Cython", "cython"), ("setuptools", "setuptools")):
        if importlib.util.find_spec(module) is None:
            return (
                f"{module} is not installed (pip install {package}, or pip install -e '.[bench]')"
            )
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler: {compiler!r} is not on PATH (e.g. apt-get install gcc)"
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not headers.exists():
        return f"the Python headers are missing: no {headers} (e.g. apt-get install python3-dev)"
    return None


def ensure_loadgen() -> str | None:
    """Compile bench/_loadgen.pyx in the checkout when its module is missing or stale.
    Returns None when the load generator is ready, else one line saying why it is not (the
    compiler's full output is kept in bench/results/build-loadgen.log)."""
    if loadgen_is_current():
        return None
    missing = missing_for_build()
    if missing is not None:
        return f"cannot build the load generator (bench/_loadgen.pyx): {missing}"
    say("building the load generator (bench/_loadgen.pyx)")
    with tempfile.TemporaryDirectory(prefix="relay-bench-build-") as build_temp:
        proc = subprocess.run(
            [sys.executable, "-c", _BUILD_LOADGEN, build_temp],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
    importlib.invalidate_caches()
    if proc.returncode == 0 and importlib.util.find_spec("bench._loadgen") is not None:
        return None
    RESULTS.mkdir(parents=True, exist_ok=True)
    build_log = RESULTS / "build-loadgen.log"
    build_log.write_text(proc.stdout + proc.stderr)
    lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    reason = next(
        (ln for ln in reversed(lines) if "error" in ln.lower()), lines[-1] if lines else ""
    )
    return f"cannot build the load generator (bench/_loadgen.pyx): {reason} (log: {build_log})"


def machine_info() -> dict[str, Any]:
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), ""
            )
    except OSError:
        pass
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {
        "nofile_soft": soft,
        "nofile_hard": hard,
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "loadavg": [float(x) for x in load],
        "kernel": platform.release(),
        "python": platform.python_version(),
        # the relay runs on this interpreter too (bench.servers): its build moves every
        # CPU-bound figure by about a tenth (docs/BENCHMARKS.md, "The interpreter's build")
        "python_executable": os.path.realpath(sys.executable),
        "libpython_shared": libpython_shared(),
        "relay_pure": os.environ.get("RELAY_PURE") == "1",
    }


def libpython_shared(maps: str = "/proc/self/maps") -> bool | None:
    """Whether this interpreter runs from a shared libpython (`--enable-shared`, as pyenv
    builds by default) rather than from one linked into its executable (Debian's `python3`);
    None where unknown."""
    try:
        with open(maps) as f:
            return any("/libpython3" in line for line in f)
    except OSError:
        return None


def cores() -> tuple[int | None, int | None]:
    avail = sorted(os.sched_getaffinity(0))
    if len(avail) >= 2:
        return avail[0], avail[1]
    return None, None


def run_loadgen(cfg: dict[str, Any], cpu: int | None) -> dict[str, Any]:
    """Run the load generator process (or the scenario's own client, cfg["module"]: the
    deflate scenario's bench.deflate) on `cfg`; its one-line JSON result."""
    timeout = (
        cfg.get("warmup", 0)
        + cfg.get("duration", 0)
        + cfg.get("drain", 0)
        + cfg.get("hold", 0)
        + 120
    )
    cfg = dict(cfg, cpu=cpu)
    proc = subprocess.Popen(
        [sys.executable, "-m", cfg.get("module", "bench.loadgen")],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        preexec_fn=(lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None,
    )
    try:
        out, _ = proc.communicate(json.dumps(cfg).encode(), timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return {"error": f"load generator timed out after {timeout:.0f} s"}
    try:
        result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"load generator exited {proc.returncode} without a result"}
    if proc.returncode != 0 and "error" not in result:
        result["error"] = f"load generator exited {proc.returncode}"
    return result


def one_line(run: scenarios.Run, fig: dict[str, Any]) -> str:
    if run.scenario == "deflate":
        return (
            f"{fig['wire_bytes_per_page']:,.0f} B/page on the wire ({fig['page_bytes']:,} B as "
            f"text{', compressed' if fig['compressed'] else ''}), "
            f"{fig['cpu_us_per_page']:,.0f} µs server CPU/page, {fig['pages_per_s']:,.0f} pages/s"
        )
    if run.scenario == "search" and fig.get("searches_per_s") is not None:
        text = (
            f"{fig['delivered_per_s']:,.0f} msg/s delivered  p99 {fig['p99_ms']} ms; "
            f"{fig['searches_per_s']:,.0f} searches/s  p50 {fig['search_p50_ms']} ms  "
            f"p99 {fig['search_p99_ms']} ms  max {fig['search_max_ms']} ms"
        )
        if "search_kept_up" in fig:
            text += f" (from each search's due time; offered {fig['search_rate']:g}/s: " + (
                "kept up)" if fig["search_kept_up"] else "DID NOT KEEP UP)"
            )
        return text
    if run.scenario == "storm":
        took = fig["storm_s"]
        return (
            f"{fig['devices']:,} devices reconnected over {fig['schedule_s']:.2f} s: every "
            f"backlog delivered in {took:.2f} s, peak RSS {fig['peak_rss_mb']:.0f} MB, canary "
            f"p50 {fig['p50_ms']} ms p99 {fig['p99_ms']} ms max {fig['max_ms']} ms; "
            f"/healthz p99 {fig['healthz_p99_ms']} ms max {fig['healthz_max_ms']} ms over "
            f"{fig.get('healthz_probes') or 0:,} probes"
        )
    if run.scenario in ("idle", "c100k"):
        text = (
            f"{fig['connections']:,} connections, {fig['kb_per_conn']:.1f} kB/conn, "
            f"{fig['connect_rate']:,.0f} conn/s, server RSS {fig['server_rss_mb']:.0f} MB"
        )
        if fig.get("canary_messages") is not None:
            text += (
                f", canary p50 {fig['p50_ms']} ms p99 {fig['p99_ms']} ms "
                f"over {fig['canary_messages']:,} messages, "
                f"{fig.get('pings_answered') or 0:,} pings answered"
            )
        return text
    if fig.get("note"):
        return f"{fig['delivered_per_s']:,.0f} msg/s, {fig['note']}" + (
            "  DID NOT KEEP UP" if fig.get("kept_up") is False else ""
        )
    text = (
        f"{fig['delivered_per_s']:,.0f} msg/s  p50 {fig['p50_ms']} ms  p99 {fig['p99_ms']} ms  "
        f"p99.9 {fig['p999_ms']} ms  server cpu {fig['server_cpu']:.0%}  "
        f"loadgen cpu {fig['loadgen_cpu']:.0%}"
    )
    if run.scenario in scenarios.OPEN_LOOP:
        text += "  kept up" if fig["kept_up"] else "  DID NOT KEEP UP"
        text += f"  {fig['cpu_us_per_msg']:.1f} µs/msg" if fig.get("cpu_us_per_msg") else ""
    if fig.get("client_bound"):
        text += "  CLIENT-BOUND"
    if fig.get("contended"):
        text += f"  contended (server waited {fig['server_waited']:.0%} for its core)"
    if fig.get("stolen"):
        text += (
            f"  steal (the hypervisor took {fig['server_steal']:.0%} of the server's core, "
            f"{fig['loadgen_steal']:.0%} of the load generator's)"
        )
    return text


def median_summary(records: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        grouped.setdefault((r["key"], r["server"]), []).append(r)
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for (key, server), recs in grouped.items():
        good = [r["figures"] for r in recs if not r.get("error")]
        entry: dict[str, Any] = {"repeats": len(good)}
        if not good:
            entry["error"] = recs[-1]["error"]
        else:
            for name in good[0]:
                vals = [g[name] for g in good if name in g]
                if all(isinstance(v, bool) for v in vals):
                    # a flag that must hold in every repeat (kept_up) or is a warning (client_bound)
                    entry[name] = (
                        any(vals) if name in ("client_bound", "contended", "stolen") else all(vals)
                    )
                elif all(isinstance(v, (int, float)) for v in vals):
                    entry[name] = statistics.median(vals)
            notes = sorted({g["note"] for g in good if g.get("note")})
            if notes:
                entry["note"] = "; ".join(notes)
            failed = [r for r in recs if r.get("error")]
            if failed:
                entry["error"] = (
                    f"{len(failed)} of {len(recs)} repeats failed: {failed[-1]['error']}"
                )
        summary.setdefault(key, {})[server] = entry
    return summary


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["soak"]:
        from bench import soak

        return soak.main(argv[1:])
    if argv[:1] == ["api"]:  # publishes/s over the HTTP API against WebSocket (bench/api.py)
        from bench import api

        return api.main(argv[1:])
    args = parse_args(argv)
    sizes = scenarios.settings(args)
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    requested = {s.strip() for s in args.servers.split(",") if s.strip()}
    wanted = set(requested)
    known_servers = {
        *scenarios.BASE_SERVERS,
        *scenarios.DURABLE_SERVERS,
        *scenarios.DEFLATE_SERVERS,
        scenarios.NULL_SERVER,
        *scenarios.CLUSTER_SERVERS,
    }
    unknown = sorted(
        set(names) - set(scenarios.ALL_SCENARIOS) - set(scenarios.NAMED_SCENARIOS)
    ) + sorted(wanted - known_servers)
    if unknown or not names or args.repeat < 1:
        say(
            f"python -m bench: unknown or empty selection {unknown or names}; scenarios are "
            f"{', '.join(scenarios.ALL_SCENARIOS)}; servers {', '.join(sorted(known_servers))}"
        )
        return 1
    runs = scenarios.plan(names, sizes)
    floor_only: set[str] = set()  # servers run only as the rate scenario's floor
    if not args.no_floor:
        # the null server's open-loop latency is the floor any server meets on this machine
        in_rate = {s for r in runs if r.scenario in scenarios.OPEN_LOOP for s in r.servers}
        floor_only = ({scenarios.NULL_SERVER} & in_rate) - requested
        wanted |= floor_only
    not_ready = ensure_loadgen()
    if not_ready is not None:
        say(f"python -m bench: {not_ready}")
        return 1

    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    json_path = args.json or RESULTS / f"{stamp}.json"
    log_dir = RESULTS / "logs" / stamp
    srv_core, lg_core = cores()
    started = time.monotonic()
    machine = machine_info()
    say(
        f"bench: {machine['cpus']} cpus ({machine['cpu_model']}), load {machine['loadavg']}, "
        f"server core {srv_core}, load generator core {lg_core}, ulimit -n {machine['nofile_soft']}"
        f" (both processes raise it to the hard limit {machine['nofile_hard']})"
        + (", RELAY_PURE=1" if machine["relay_pure"] else "")
    )
    say(
        f"bench: python {machine['python']} ({machine['python_executable']}"
        + {True: ", shared libpython", False: ", libpython in the executable", None: ""}[
            machine["libpython_shared"]
        ]
        + "): the relay runs on it"
    )

    specs: dict[str, servers.ServerSpec] = {}
    unavailable: dict[str, str] = {}
    needed = {s for r in runs for s in r.servers} & wanted
    if "relay" in needed:
        specs["relay"] = servers.relay_spec(None)
    if "relay-sqlite" in needed:
        specs["relay-sqlite"] = servers.relay_spec("<tmpfile>")
    if "node-ws" in needed:
        spec, why = servers.node_spec()
        if spec is None:
            unavailable["node-ws"] = why
            say(f"node-ws baseline skipped: {why}")
        else:
            specs["node-ws"] = spec
    if "trio-websocket" in needed:
        specs["trio-websocket"] = servers.trio_spec()
    if "relay-no-compression" in needed:
        specs["relay-no-compression"] = servers.relay_no_compression_spec()
    if scenarios.NULL_SERVER in needed:
        specs[scenarios.NULL_SERVER] = servers.null_spec()
    for name in scenarios.CLUSTER_SERVERS:
        if name in needed:
            why_not = cluster.unavailable(name)
            if why_not is not None:
                unavailable[name] = why_not
                say(f"{name} skipped: {why_not}")
            else:
                specs[name] = cluster.spec(name)
    for name in ("relay", "relay-sqlite", *scenarios.CLUSTER_SERVERS):
        if name in specs:
            say(f"{name}: {' '.join(specs[name].argv[1:])}  [{specs[name].note}]")

    todo = [
        (rep, run, srv)
        for rep in range(args.repeat)
        for run in runs
        for srv in run.servers
        if srv in specs and (srv not in floor_only or run.scenario in scenarios.OPEN_LOOP)
    ]
    profile = args.profile
    if profile and not profiling.available():
        say("profile skipped: py-spy is not installed (pip install py-spy)")
        profile = False
    reuse = args.quick or args.reuse_servers
    if reuse:
        # one server process per (repeat, server), every scenario run against it in turn
        order_of = {name: n for n, name in enumerate(specs)}
        todo.sort(key=lambda t: (t[0], order_of[t[2]]))
    settle = 0.1 if args.quick else 0.3
    records: list[dict[str, Any]] = []
    alone_delivered: float | None = None  # msg/s of the search scenario's first phase
    current: servers.RunningServer | cluster.RunningCluster | None = None
    tmp = tempfile.TemporaryDirectory(prefix="relay-bench-")
    try:
        for i, (rep, run, srv) in enumerate(todo, 1):
            rep_txt = f" (repeat {rep + 1}/{args.repeat})" if args.repeat > 1 else ""
            say(f"[{i}/{len(todo)}] {run.key} · {srv}{rep_txt}: {run.describe}")
            record: dict[str, Any] = {
                "key": run.key,
                "scenario": run.scenario,
                "server": srv,
                "repeat": rep,
                "loadgen_config": run.loadgen,
            }
            storm_run = run.scenario == "storm"
            search_run = run.scenario == "search"
            # The search scenario's phases run in order on one relay and its prefilled store:
            # a fresh server and store before the first phase, every later phase on that live
            # server, stopped after the last phase only (whatever --reuse-servers says: the
            # next scenario needs no 1M-message store).
            phase = run.extra.get("phase") if search_run else None
            search_first = phase == scenarios.SEARCH_PHASES[0]
            search_later = search_run and not search_first
            search_last = phase == scenarios.SEARCH_PHASES[-1]
            user_prefix = f"r{i}u"
            if current is not None and (
                (not reuse and not search_later)
                or current.spec.name != srv
                or not current.alive()
                or storm_run
                or search_first
            ):
                current.stop()
                current = None
            if search_first:
                alone_delivered = None
            if current is None and search_later:
                # its figures would be measured against another store than its first phase's
                record["error"] = (
                    f"no live server from {run.scenario}@{scenarios.SEARCH_PHASES[0]}: its "
                    "phases share one relay and store"
                )
                say(f"    ERROR: {record['error']}")
                records.append(record)
                continue
            if current is None:
                spec = specs[srv]
                if srv == "relay-sqlite":
                    db_path = Path(tmp.name) / f"bench-{i}.db"
                    if storm_run:
                        # the store the relay restarts on: every device's backlog waiting
                        devices = run.extra["devices"]
                        stored = storm.prefill(
                            db_path,
                            [f"{user_prefix}{k}" for k in range(devices)],
                            run.loadgen["backlog"],
                            run.loadgen["text_bytes"],
                        )
                        say(f"    stored {stored:,} backlog messages for {devices:,} devices")
                    elif search_run:
                        t_fill = time.monotonic()
                        stored = search_mod.prefill(
                            db_path,
                            sizes["search_messages"],
                            *search_mod.users(
                                "search-", sizes["search_users"], sizes["search_partners"]
                            ),
                        )
                        say(
                            f"    stored {stored:,} messages (unindexed) in "
                            f"{time.monotonic() - t_fill:.1f} s"
                        )
                    spec = servers.relay_spec(str(db_path))
                try:
                    if srv in scenarios.CLUSTER_SERVERS:
                        # every node on the server core; a new database (and Redis) each start
                        current = cluster.start(
                            srv, log_dir, f"{run.key}-{srv}-{rep}", Path(tmp.name), srv_core
                        )
                    else:
                        current = servers.start(
                            spec, log_dir / f"{run.key}-{srv}-{rep}.log", srv_core
                        )
                except servers.ServerError as exc:
                    record["error"] = str(exc)
                    say(f"    ERROR: {exc}")
                    records.append(record)
                    continue
                time.sleep(settle)  # let the server settle before the RSS/CPU baseline
            server = current
            # a user id prefix per run: a reused server never sees the same user twice
            cfg = dict(
                run.loadgen,
                port=server.port,
                server_pid=server.pid,
                server_cpu=srv_core,
                user_prefix=user_prefix,
            )
            if isinstance(server, cluster.RunningCluster):
                # the server's CPU is the sum over its node processes
                cfg["server_pids"] = server.pids
                if len(server.ports) > 1:
                    # each pair's two users on different nodes
                    cfg["ports"] = server.ports
                    record["node_ports"] = server.ports
            if run.scenario == "mix":
                senders = [f"{user_prefix}{k}" for k in range(run.loadgen["clients"])]
                if srv.startswith("relay"):
                    try:
                        cfg["files"] = mix.upload_files(f"ws://127.0.0.1:{server.port}", senders)
                    except Exception as exc:  # the run then fails: its attachments are refused
                        say(f"    uploading the senders' files failed: {exc!r}")
                else:  # a server without /files: ids of the same length, forwarded unread
                    cfg["files"] = mix.stand_in_files(senders)
            if storm_run:
                devices = run.extra["devices"]
                cfg["connect_at"] = (
                    storm.uniform_schedule(devices, sizes["storm_spread"])
                    if run.extra["schedule"] == "uniform"
                    else storm.client_default_schedule(devices)
                )
            searching: search_mod.SearchClient | None = None
            index: dict[str, Any] | None = None
            if search_run and srv == "relay-sqlite":
                db = Path(server.spec.argv[server.spec.argv.index("--db") + 1])
                try:
                    pending, took = search_mod.wait_indexed(db, sizes["index_timeout"])
                except TimeoutError as exc:
                    index = {"error": str(exc)}
                else:
                    index = {"messages": pending, "seconds": round(took, 3)}
                    say(f"    the relay indexed {pending:,} messages for search in {took:.1f} s")
                if phase != "alone" and "error" not in index:
                    searchers, _ = search_mod.users("search-", sizes["search_users"], 0)
                    # searching: an open loop at a fixed rate, one connection per searching
                    # user; capacity: a closed loop of `search_concurrency` connections
                    loop: dict[str, Any] = (
                        {"mode": "open", "rate": sizes["search_rate"]}
                        if phase == "searching"
                        else {"mode": "closed", "concurrency": sizes["search_concurrency"]}
                    )
                    try:
                        searching = search_mod.SearchClient(
                            {
                                "port": server.port,
                                "users": searchers,
                                "queries": list(search_mod.QUERIES),
                                "limit": sizes["search_limit"],
                                **loop,
                            },
                            lg_core,
                        )
                    except RuntimeError as exc:
                        index["error"] = str(exc)
            prof_path = None
            if profile and srv.startswith("relay"):
                prof_path = RESULTS / f"{stamp}-profiles" / f"{run.key}-{srv}-{rep}.txt"
                cfg["profile"] = str(prof_path)
            prober = storm.HealthProber(server.port) if storm_run else None
            if index is not None and "error" in index:
                raw: dict[str, Any] = {"error": index["error"]}
            else:
                raw = run_loadgen(cfg, lg_core)
            if prober is not None:
                raw["healthz"] = prober.finish()
            if index is not None:
                if "error" not in index:
                    # searches scan the messages not indexed yet (relay/store/sqlite/search.py):
                    # how many there were after the run (its window and drain)
                    index["unindexed_after"] = search_mod.unindexed(db)
                raw["index"] = index
            if searching is not None:
                if "before" in raw:
                    raw["search"] = searching.finish(raw["before"]["t"], raw["after"]["t"])
                searching.kill()
            record["server_argv"] = server.spec.argv
            if srv == "relay-sqlite":
                db = Path(server.spec.argv[server.spec.argv.index("--db") + 1])
                record["db_bytes"] = sum(
                    p.stat().st_size for p in db.parent.glob(db.name + "*") if p.is_file()
                )
            if prof_path is not None:
                record["profiled"] = True
                if prof_path.exists():
                    record["profile"] = profiling.summarise(prof_path)
                    record["profile"]["file"] = str(prof_path)
                    for share, frame in record["profile"].get("self", [])[:6]:
                        say(f"      profile {share:6.1%} self  {frame}")
            alive = server.alive()
            record["raw"] = raw
            if "error" in raw:
                record["error"] = raw["error"]
            elif not alive:
                record["error"] = f"{srv} died during the run; log tail:\n{server.log_tail()}"
            else:
                fig, problems = scenarios.figures(run, raw)
                record["figures"] = fig
                if problems:
                    record["error"] = "; ".join(problems)
            if record.get("error"):
                say(f"    ERROR: {record['error']}")
                if server.log_tail():
                    say(
                        "    server log tail:\n      "
                        + server.log_tail(8).replace("\n", "\n      ")
                    )
            else:
                line = one_line(run, record["figures"])
                delivered = record["figures"].get("delivered_per_s")
                if search_first:
                    alone_delivered = delivered
                elif search_later and alone_delivered and delivered is not None:
                    line += f"; messaging {delivered / alone_delivered:.2f}x of alone"
                say(f"    {line}")
            records.append(record)
            if (not reuse and not search_run) or storm_run or search_last:
                server.stop()
                current = None
    finally:
        if current is not None:
            current.stop()
        tmp.cleanup()

    summary = median_summary(records)
    order = list(dict.fromkeys(r.key for r in runs))
    budget_list = budgets_mod.load(args.budgets)
    verdicts = budgets_mod.check(budget_list, summary, set(order))
    failed_runs = [r for r in records if r.get("error")]

    say("")
    say(report.table(summary, order))
    say("")
    for name, why in unavailable.items():
        say(f"{name}: skipped ({why})")
    for name in ("relay", "relay-sqlite", *scenarios.CLUSTER_SERVERS):
        if name in specs:
            say(f"{name}: {specs[name].note}")
    say("budgets" + (" (not enforced: --no-budgets)" if args.no_budgets else "") + ":")
    for v in verdicts:
        say(f"  [{v.status}] {v.budget.name}: {v.detail}")

    machine["loadavg_end"] = machine_info()["loadavg"]
    doc = {
        "started_utc": stamp,
        "elapsed_s": round(time.monotonic() - started, 1),
        "machine": machine,
        "settings": sizes | {"quick": args.quick, "repeat": args.repeat},
        "cores": {"server": srv_core, "loadgen": lg_core},
        "servers": {n: {"argv": s.argv, "env": s.env, "note": s.note} for n, s in specs.items()},
        "servers_available": sorted(specs),
        "servers_unavailable": unavailable,
        "scenarios": order,
        "summary": summary,
        "budgets": [v.as_dict() for v in verdicts],
        "errors": [
            {"key": r["key"], "server": r["server"], "repeat": r["repeat"], "error": r["error"]}
            for r in failed_runs
        ],
        "runs": records,
    }
    report.write_json(json_path, doc)
    say(f"results: {json_path}")
    if not args.no_chart:
        say(report.chart(json_path.with_suffix(".png"), summary, order))

    if failed_runs:
        say(
            f"FAILED: {len(failed_runs)} run(s) produced no valid figures: "
            + ", ".join(f"{r['key']}/{r['server']}" for r in failed_runs)
        )
        return 1
    missed = [v for v in verdicts if v.status == "FAIL"]
    if missed and not args.no_budgets:
        say("MISSED BUDGETS: " + "; ".join(v.budget.name for v in missed))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
