"""`python -m bench --quick` end to end: every scenario, every server, real processes.

The harness must never rot: this runs it exactly as a user would (a subprocess from the
repository root, budgets reported but not enforced) and checks that every scenario produced
real figures for every server, so a crashed scenario or a server that stopped answering
cannot pass silently.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCENARIO_KEYS = {
    "pairwise",
    "mix",
    "pingpong",
    "rate@2000",
    "rate@4000",
    "sparse@100",
    "sparse@200",
    "conns@10",
    "conns@100",
    "fanout",
    "idle",
    "c100k",
    "durable",
    "storm@uniform",
    "storm@client-default",
    "deflate",
    "search@alone",
    "search@searching",
    "search@capacity",
    "cluster@one-node",
    "cluster@three-nodes",
    "cluster@durable",
}
# the servers each scenario runs against, beyond which the run's available servers limit it
SCENARIO_SERVERS = {
    "durable": {"relay", "relay-sqlite"},
    "mix": {"relay", "node-ws"},
    "sparse": {"relay", "node-ws", "null"},
    "conns": {"relay", "node-ws"},
    "c100k": {"relay", "node-ws"},
    "storm": {"relay-sqlite"},
    "deflate": {"relay", "relay-no-compression"},
    "search": {"relay-sqlite"},
    # by whole key: one node on PostgreSQL, three nodes on PostgreSQL + Redis, and the durable
    # throughput of the two stores
    "cluster@one-node": {"relay-postgres"},
    "cluster@three-nodes": {"relay-cluster"},
    "cluster@durable": {"relay-sqlite", "relay-postgres"},
}
CLUSTER_SERVERS = {"relay-postgres", "relay-cluster"}


def test_quick_run_measures_every_scenario_on_every_server(tmp_path: Path) -> None:
    out = tmp_path / "quick.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--no-budgets",
            "--json",
            str(out),
            "--servers",
            "relay,relay-sqlite,node-ws,trio-websocket,null,relay-no-compression,"
            "relay-postgres,relay-cluster",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["errors"] == []
    # the interpreter the relay ran on, and its build's libpython, are part of the result
    machine = doc["machine"]
    assert machine["python_executable"] == os.path.realpath(sys.executable)
    with open("/proc/self/maps") as maps:  # this process runs the same executable
        assert machine["libpython_shared"] is any("/libpython3" in line for line in maps)
    assert f"python {machine['python']} ({machine['python_executable']}" in proc.stdout

    available = set(doc["servers_available"])
    # the machine's PostgreSQL and redis-server are required, as for the several-node tests
    expected = {
        "relay",
        "relay-sqlite",
        "trio-websocket",
        "null",
        "relay-no-compression",
        *CLUSTER_SERVERS,
    }
    if os.environ.get("RELAY_SKIP_NODE") != "1":
        # node-ws is skipped only when node is absent, and then it must say so.
        if shutil.which("node"):
            expected.add("node-ws")
        else:
            assert "node-ws" in doc["servers_unavailable"]
    assert expected <= available

    summary = doc["summary"]
    assert set(summary) == SCENARIO_KEYS
    for key, per_server in summary.items():
        default = available - {"relay-sqlite", "relay-no-compression", *CLUSTER_SERVERS}
        servers = SCENARIO_SERVERS.get(key, SCENARIO_SERVERS.get(key.split("@")[0], default))
        servers &= available
        assert set(per_server) == servers, key
        for server, fig in per_server.items():
            assert "error" not in fig, (key, server, fig)
            # measured from /proc in 10 ms ticks: 200 idle connects may cost less than one
            assert fig["server_cpu"] >= 0 and fig["loadgen_cpu"] >= 0, (key, server)
            if key.startswith("storm"):
                # 200 devices, each got its 3 stored messages after reconnecting to a relay
                # started on them; the canary pair kept talking meanwhile
                assert fig["devices"] == 200 and fig["backlogs_complete"] == 200, fig
                assert fig["storm_s"] > 0 and fig["peak_rss_mb"] > 0, fig
                assert fig["canary_messages"] > 0 and 0 < fig["p50_ms"] <= fig["p99_ms"], fig
                # a load balancer's probes were answered throughout (else the run has an error)
                assert fig["healthz_probes"] >= 1 and fig["healthz_max_ms"] > 0, fig
                continue
            if key == "deflate":
                # the 50-message page went out compressed, and much smaller, only when on
                assert fig["pages"] > 0 and fig["cpu_us_per_page"] > 0, (server, fig)
                assert fig["compressed"] is (server == "relay"), (server, fig)
                if server == "relay":
                    assert fig["wire_bytes_per_page"] < fig["page_bytes"] / 3, fig
                continue
            if key == "c100k":
                # 400 connections from four source addresses (100 each in --quick), and a
                # canary pair that exchanged messages while they were held
                assert fig["connections"] == 400
                assert fig["canary_messages"] > 0 and 0 < fig["p50_ms"] <= fig["p99_ms"]
                continue
            if key == "idle":
                assert fig["connections"] == 200
                # an RSS delta over only 200 connections may be negative (a garbage-collecting
                # server returns memory meanwhile); the full run's 10,000 make it meaningful
                assert math.isfinite(fig["kb_per_conn"]) and fig["connect_rate"] > 0, (server, fig)
                continue
            if key.startswith("search"):
                # the relay started on 5,001 stored messages and indexed what the prefill left
                # unindexed before the window (the prefill's store indexes whole 500-message
                # chunks while its writer is idle, more of them on a loaded machine); with
                # searches, every one was answered without error, and not all came back empty
                if key == "search@alone":
                    assert fig["index_messages"] > 0 and fig["index_s"] > 0, fig
                    assert "searches" not in fig, fig
                else:
                    assert fig["searches"] > 0 and fig["searches_per_s"] > 0, fig
                    assert 0 < fig["search_p50_ms"] <= fig["search_p99_ms"], fig
                    assert fig["search_empty"] < fig["searches"], fig
                if key == "search@searching":
                    # the open loop: 100 searches/s due over the 0.5 s window, each timed from
                    # its due time; kept up or not, it says which
                    assert fig["search_rate"] == 100 and 40 <= fig["search_due"] <= 60, fig
                    assert isinstance(fig["search_kept_up"], bool), fig
                    assert fig["search_unanswered"] >= 0, fig
                    assert fig["search_send_lag_p99_ms"] is not None, fig
                if key == "search@capacity":
                    assert "search_rate" not in fig, fig
            assert fig["delivered_per_s"] > 0, (key, server, fig)
            assert 0 < fig["p50_ms"] <= fig["p99_ms"] <= fig["p999_ms"], (key, server, fig)
            if key.startswith(("rate", "sparse", "conns")):
                assert fig["sent_per_s"] > 0 and isinstance(fig["kept_up"], bool)
                # CPU is read from /proc in 10 ms ticks: the null floor's few milliseconds in a
                # quick window (500 messages) can round to none; every relay's cannot
                cpu = fig["cpu_us_per_msg"]
                assert cpu > 0 or (server == "null" and cpu == 0), (key, server, fig)
            if key.startswith(("sparse", "conns")):
                assert fig["connections"] == int(key.split("@")[1]), (key, fig)
            if key in ("cluster@one-node", "cluster@three-nodes"):
                # the same offered rate on one node and on three; CPU summed over the nodes
                assert fig["nodes"] == (3 if key == "cluster@three-nodes" else 1), fig
                assert fig["offered_per_s"] == 200 and isinstance(fig["kept_up"], bool), fig
                assert fig["sent_per_s"] > 0 and fig["cpu_us_per_msg"] > 0, fig

    # The durable scenario really ran on SQLite: the database file was written.
    sqlite_runs = [r for r in doc["runs"] if r["server"] == "relay-sqlite"]
    assert sqlite_runs and all(r["db_bytes"] > 0 for r in sqlite_runs)
    assert all("--db" in r["server_argv"] for r in sqlite_runs)
    # The search scenario's three phases ran in order on one relay and its prefilled store (a
    # server started for a later phase would have a store of its own, prefilled anew).
    search_runs = [r for r in doc["runs"] if r["scenario"] == "search"]
    assert [r["key"] for r in search_runs] == [
        "search@alone",
        "search@searching",
        "search@capacity",
    ]
    assert len({tuple(r["server_argv"]) for r in search_runs}) == 1, search_runs
    # The cluster servers ran on a PostgreSQL database of their own, the three nodes on a Redis;
    # the load generator split each pair over two of the three nodes.
    for r in doc["runs"]:
        if r["server"] in CLUSTER_SERVERS:
            argv = r["server_argv"]
            assert argv[argv.index("--db") + 1].startswith("postgresql://"), argv
            assert ("--redis-url" in argv) is (r["server"] == "relay-cluster"), argv
            ports = r.get("node_ports")
            assert (ports is not None and len(set(ports)) == 3) is (r["server"] == "relay-cluster")

    # Each budget is judged in the JSON, even when not enforced.
    assert len(doc["budgets"]) == 17
    assert all(b["status"] in {"pass", "FAIL", "skipped"} for b in doc["budgets"])
    # The summary table is printed at the end.
    assert "scenario" in proc.stdout and "budgets" in proc.stdout


def test_the_interpreter_build_is_read_from_the_mapped_libraries(tmp_path: Path) -> None:
    from bench.__main__ import libpython_shared

    shared = tmp_path / "shared"
    shared.write_text(
        "55d0c0a00000-55d0c0a01000 r--p 00000000 08:01 1 /root/.pyenv/versions/3.11.7/bin/python3.11\n"
        "7f1e2c000000-7f1e2c100000 r-xp 00000000 08:01 2 "
        "/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0\n"
    )
    static = tmp_path / "static"
    static.write_text(
        "55d0c0a00000-55d0c0c00000 r-xp 00000000 08:01 1 /usr/bin/python3.11\n"
        "7f1e2c000000-7f1e2c100000 r-xp 00000000 08:01 3 /lib/x86_64-linux-gnu/libc.so.6\n"
    )
    assert libpython_shared(str(shared)) is True
    assert libpython_shared(str(static)) is False
    assert libpython_shared(str(tmp_path / "missing")) is None
