"""How `python -m bench` turns load-generator counters into figures and verdicts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import budgets, loadgen, profiling, report, scenarios, storm


def _rate_run() -> scenarios.Run:
    s = scenarios.settings(_Args())
    return next(r for r in scenarios.plan(["rate"], s) if r.key == "rate@20000")


class _Args:
    quick = False


def _raw(**over: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "clients": 100,
        "closed": 0,
        "before": {"t": 10.0, "loadgen_cpu_s": 1.0, "server_cpu_s": 2.0, "server_rss_kb": 1000},
        "after": {"t": 15.0, "loadgen_cpu_s": 2.0, "server_cpu_s": 6.5, "server_rss_kb": 1000},
        "sent": 100_000,
        "delivered": 100_000,
        "sent_per_s": 20_000.0,
        "delivered_per_s": 20_000.0,
        "receipts_per_s": 20_000.0,
        "offered_per_s": 20_000.0,
        "backlog_at_start": 40,
        "backlog_at_end": 45,
        "blocked_sends": 0,
        "total_failed": 0,
        "total_errors": 0,
        "latency": {"p50_ms": 0.2, "p99_ms": 0.8, "p999_ms": 1.5, "max_ms": 3.0},
        "send_lag": {"p99_ms": 0.1},
    }
    raw.update(over)
    return raw


def test_cpu_shares_come_from_the_window_edges() -> None:
    fig, problems = scenarios.figures(_rate_run(), _raw())
    assert problems == []
    assert fig["server_cpu"] == 0.9  # 4.5 s of CPU over a 5 s window
    assert fig["loadgen_cpu"] == 0.2
    assert fig["client_bound"] is False
    assert fig["kept_up"] is True


def test_cpu_per_message_is_the_servers_cpu_over_what_it_delivered() -> None:
    fig, _ = scenarios.figures(_rate_run(), _raw())
    assert fig["cpu_us_per_msg"] == 45.0  # 0.9 of a core over 20,000 deliveries/s
    nothing, _ = scenarios.figures(_rate_run(), _raw(delivered=0, delivered_per_s=0.0))
    assert "cpu_us_per_msg" not in nothing  # no delivery: no cost per delivery to report


def test_growing_backlog_means_the_server_did_not_keep_up() -> None:
    fig, _ = scenarios.figures(_rate_run(), _raw(backlog_at_end=40 + 5_000))
    assert fig["kept_up"] is False


def test_generator_off_schedule_is_client_bound() -> None:
    fig, _ = scenarios.figures(_rate_run(), _raw(sent_per_s=15_000.0))
    assert fig["kept_up"] is False and fig["client_bound"] is True
    busy = _raw()
    busy["after"] = dict(busy["after"], loadgen_cpu_s=1.0 + 4.7)
    assert scenarios.figures(_rate_run(), busy)[0]["client_bound"] is True


def test_refused_messages_invalidate_a_run() -> None:
    _, problems = scenarios.figures(_rate_run(), _raw(total_failed=3, first_error="rate_limited"))
    assert problems and "refused" in problems[0]


def test_open_loop_with_nothing_delivered_is_a_result_that_fails_its_budget() -> None:
    fig, problems = scenarios.figures(
        _rate_run(), _raw(delivered=0, delivered_per_s=0.0, latency={"count": 0})
    )
    assert problems == []
    assert fig["kept_up"] is False and fig["p99_ms"] is None
    summary = {"rate@20000": {"relay": fig}}
    budget = budgets.Budget("p99", "rate@20000/relay/p99_ms", "<=", 1.0)
    verdict = budgets.check([budget], summary, {"rate@20000"})[0]
    assert verdict.status == "FAIL" and "no message delivered" in verdict.detail


def test_waiting_for_the_core_marks_a_run_contended() -> None:
    raw = _raw()
    raw["before"] = dict(raw["before"], server_runq_s=1.0, loadgen_runq_s=1.0)
    raw["after"] = dict(raw["after"], server_runq_s=1.1, loadgen_runq_s=1.05)
    fig, _ = scenarios.figures(_rate_run(), raw)
    assert fig["contended"] is False
    raw["after"] = dict(raw["after"], server_runq_s=2.5)  # waited 1.5 s of a 5 s window
    fig, _ = scenarios.figures(_rate_run(), raw)
    assert fig["contended"] is True and abs(fig["server_waited"] - 0.3) < 1e-9


def test_steal_of_a_pinned_core_marks_a_run_stolen() -> None:
    raw = _raw()
    raw["before"] = dict(raw["before"], server_steal_s=100.0, loadgen_steal_s=50.0)
    raw["after"] = dict(raw["after"], server_steal_s=100.1, loadgen_steal_s=50.05)
    fig, _ = scenarios.figures(_rate_run(), raw)
    assert fig["stolen"] is False and abs(fig["server_steal"] - 0.02) < 1e-9
    raw["after"] = dict(raw["after"], server_steal_s=100.6)  # 0.6 s of a 5 s window
    fig, _ = scenarios.figures(_rate_run(), raw)
    assert fig["stolen"] is True and abs(fig["server_steal"] - 0.12) < 1e-9


def test_core_steal_is_read_from_proc_stat(tmp_path: Path) -> None:
    import os

    from bench.loadgen import core_steal_s

    tck = os.sysconf("SC_CLK_TCK")
    stat = tmp_path / "stat"
    stat.write_text(
        "cpu  10 0 20 300 4 0 5 700 0 0\n"
        "cpu0 5 0 10 150 2 0 3 200 0 0\n"
        "cpu1 5 0 10 150 2 0 2 500 0 0\n"
        "cpu10 1 0 1 1 1 0 1 999 0 0\n"
        "intr 12345\n"
    )
    assert core_steal_s(None, str(stat)) == 700 / tck
    assert core_steal_s(0, str(stat)) == 200 / tck
    assert core_steal_s(1, str(stat)) == 500 / tck  # not cpu10's line
    assert core_steal_s(7, str(stat)) == 0.0  # no such core: nothing reported
    assert core_steal_s(0) >= 0.0  # the real file parses


def test_kernel_share_of_cpu_per_message_comes_from_the_servers_stime() -> None:
    # the server spent 4.5 s of CPU in the 5 s window, 3 s of it in the kernel, delivering
    # 20,000 msg/s: 45 µs per message, 30 of them system calls
    raw = _raw()
    raw["before"] = {**raw["before"], "server_sys_s": 1.0}
    raw["after"] = {**raw["after"], "server_sys_s": 4.0}
    fig, problems = scenarios.figures(_rate_run(), raw)
    assert not problems
    assert fig["cpu_us_per_msg"] == 45.0
    assert fig["sys_us_per_msg"] == 30.0


def test_cpu_times_of_a_process_split_its_own_code_from_the_kernels() -> None:
    # this process burns CPU in Python (user) and in read() system calls (kernel)
    user0, sys0 = loadgen.proc_cpu_times(os.getpid())
    x = 0
    for i in range(3_000_000):
        x += i
    with open("/dev/zero", "rb", buffering=0) as f:
        for _ in range(20_000):
            f.read(65536)
    user1, sys1 = loadgen.proc_cpu_times(os.getpid())
    assert user1 > user0
    assert sys1 > sys0
    assert loadgen.proc_cpu_seconds(os.getpid()) >= user1 + sys1


def test_profiler_is_found_beside_the_interpreter_when_not_on_path(
    tmp_path: Path, monkeypatch: Any
) -> None:
    # `pip install py-spy` into a venv whose bin/ is not on PATH (python run by its path)
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    spy = bin_dir / "py-spy"
    spy.write_text("#!/bin/sh\n")
    spy.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert profiling.available() == str(spy)
    spy.unlink()
    assert profiling.available() is None


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def test_a_full_runs_chart_stays_readable(tmp_path: Path) -> None:
    # a full run: 22 charted scenarios, nine servers, each scenario run by two to four of
    # them; the chart's width follows the scenarios, not scenarios x servers
    servers = ["relay", "node-ws", "trio-websocket", "null", "relay-sqlite"]
    servers += ["relay-postgres", "relay-cluster", "relay-no-compression", "other"]
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for j in range(22):
        ran = servers[j % 6 : j % 6 + 2 + j % 3]
        summary[f"s{j}"] = {
            s: {"delivered_per_s": 1000.0 * (j + 1), "p50_ms": 0.1, "p99_ms": 1.0} for s in ran
        }
    summary["idle"] = {"relay": {"kb_per_conn": 2.5}}  # memory only: not charted
    summary["deflate"] = {"relay": {"pages_per_s": 3000.0}}  # no message figures
    path = tmp_path / "chart.png"
    assert report.chart(path, summary, list(summary)) == f"chart: {path}"
    width, height = _png_size(path)
    assert 800 <= width <= 2800 and height <= 1400, (width, height)


def test_the_table_shows_the_storm_canarys_worst_message() -> None:
    # the canary has one message in flight, so a stall of seconds is one sample of its p99:
    # the summary says the worst one too
    fig = {"devices": 19_798, "storm_s": 20.2, "peak_rss_mb": 254.0, "p50_ms": 2.3}
    fig |= {"p99_ms": 18.1, "max_ms": 6597.8}
    text = report.table({"storm@uniform": {"relay-sqlite": fig}}, ["storm@uniform"])
    assert "latency: the canary's, max 6,598 ms" in text


def _storm_run() -> scenarios.Run:
    s = scenarios.settings(_Args())
    return next(r for r in scenarios.plan(["storm"], s) if r.key == "storm@uniform")


def _storm_raw(healthz: dict[str, Any]) -> dict[str, Any]:
    return _raw(
        storm_clients=19_798,
        backlogs_complete=19_798,
        storm_s=20.0,
        schedule_s=1.0,
        peak_rss_kb=200_000,
        canary={"count": 2_000, "p50_ms": 3.0, "p99_ms": 25.0, "max_ms": 150.0},
        healthz=healthz,
    )


def test_a_storm_with_unanswered_health_probes_is_not_a_result() -> None:
    # a load balancer whose probe times out takes the node out of service mid-storm
    answered = {"probes": 150, "failed": 0, "first_error": None, "p99_ms": 300.0, "max_ms": 640.0}
    fig, problems = scenarios.figures(_storm_run(), _storm_raw(answered))
    assert problems == []
    assert (fig["healthz_probes"], fig["healthz_p99_ms"], fig["healthz_max_ms"]) == (150, 300, 640)
    lost = answered | {"probes": 7, "failed": 4, "first_error": "TimeoutError('timed out')"}
    _, problems = scenarios.figures(_storm_run(), _storm_raw(lost))
    assert problems == [
        "4 of 7 /healthz probes got no 200 within 5 s during the storm "
        "(first: TimeoutError('timed out'))"
    ]


def test_the_health_prober_asks_a_real_relay_as_a_load_balancer_does(tmp_path: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "relay", "serve", "--memory", "--port", "0", "--host", "127.0.0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as relay:
        try:
            assert relay.stdout is not None
            line = relay.stdout.readline()
            port = int(line.rsplit(":", 1)[1].split()[0])
            prober = storm.HealthProber(port)
            deadline = time.monotonic() + 30
            while prober.answered() < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            found = prober.finish()
        finally:
            relay.terminate()
    assert found["failed"] == 0 and found["probes"] >= 3, found
    assert 0 < found["p99_ms"] <= found["max_ms"] < 5000, found
    closed = storm.HealthProber(port)  # nothing listens there any more
    while closed.failures() < 1:
        time.sleep(0.05)
    found = closed.finish()
    assert found["failed"] >= 1 and "Connection" in found["first_error"], found
