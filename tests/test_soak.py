"""`python -m bench soak`: the RSS trend it reports, and a short run end to end (real relay
process, real clients over loopback) so the harness cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.soak import curve_lines, rss_trend, sample

ROOT = Path(__file__).resolve().parent.parent


def test_a_flat_series_has_no_growth() -> None:
    samples = [(60.0 * i, 50_000.0 + (7 if i % 2 else -7)) for i in range(31)]
    trend = rss_trend(samples, 20 * 60)
    assert trend["samples"] == 21 and trend["from_s"] == 600 and trend["to_s"] == 1800
    assert abs(trend["growth_pct"]) < 0.05


def test_growth_is_measured_over_the_window_only() -> None:
    # 20 MB of warm-up in the first ten minutes, then 1 MB more over the last twenty: 2%
    warm = [(60.0 * i, 30_000.0 + 2_000 * i) for i in range(10)]
    late = [(60.0 * i, 50_000.0 + 50 * (i - 10)) for i in range(10, 31)]
    trend = rss_trend(warm + late, 20 * 60)
    assert trend["growth_pct"] == pytest.approx(2.0)
    assert trend["slope_kb_per_min"] == pytest.approx(50.0)
    assert trend["fit_first_kb"] == pytest.approx(50_000.0)


def test_a_run_shorter_than_the_window_uses_every_sample() -> None:
    trend = rss_trend([(0.0, 100.0), (30.0, 101.0), (60.0, 102.0)], 20 * 60)
    assert trend["samples"] == 3 and trend["growth_pct"] == pytest.approx(2.0)


def test_a_sample_records_the_load_beside_the_memory(tmp_path: Path) -> None:
    (tmp_path / "x.db").write_bytes(b"x" * 1000)
    now = sample(os.getpid(), time.monotonic(), tmp_path / "x.db")
    assert now["rss_kb"] > 0 and now["db_bytes"] == 1000
    assert (now["load1"], now["load5"], now["load15"]) == pytest.approx(os.getloadavg(), abs=1.0)
    head, line = curve_lines([now | {"load1": 3.25}])
    assert head.split()[-1] == "load" and line.split()[-1] == "3.25"


@pytest.mark.slow
def test_a_short_soak_runs_every_kind_of_traffic(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "soak",
            "--minutes",
            "0.3",
            "--sample-every",
            "1",
            "--report-every",
            "3",
            "--users",
            "6",
            "--groups",
            "2",
            "--group-size",
            "4",
            "--reconnectors",
            "3",
            "--slow-readers",
            "2",
            "--rate",
            "60",
            "--slow-hold",
            "6",
            # a budget no run can meet: the exit status says so, and everything is still reported
            "--budget-pct",
            "-1000",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "relay RSS" in proc.stdout and "GROWING" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["budget"] == {"growth_pct_below": -1000, "met": False}
    samples = doc["samples"]
    assert len(samples) >= 15 and all(s["rss_kb"] > 10_000 for s in samples)
    reported = [s for s in samples if "reported" in s]
    # sampled every second, reported every third: the first, every third, the last
    assert samples[0] in reported and samples[-1] in reported
    assert 6 <= len(reported) <= len(samples) // 3 + 2
    for s in samples:
        # VmRSS is RssAnon + RssFile + RssShmem (none here), each rounded to a kB
        assert s["anon_kb"] > 0 and s["file_kb"] > 0
        assert abs(s["rss_kb"] - s["anon_kb"] - s["file_kb"]) <= 2, s
    assert samples[-1]["db_bytes"] > samples[0]["db_bytes"] > 0
    # the curve: a header, then one line per reported sample, in order
    lines = proc.stdout.splitlines()
    head = lines.index("   time   RSS MB  RssAnon MB  RssFile MB   DB MB   load")
    rows = lines[head + 1 : head + 1 + len(reported)]
    assert not lines[head + 1 + len(reported)].strip()  # the table ends there
    for s, row in zip(reported, rows, strict=True):
        assert row.split()[1:] == [
            f"{s['rss_kb'] / 1024:.1f}",
            f"{s['anon_kb'] / 1024:.1f}",
            f"{s['file_kb'] / 1024:.1f}",
            f"{s['db_bytes'] / 1e6:.1f}",
            f"{s['load1']:.2f}",
        ]
    assert any(line.startswith("RssAnon over the last") for line in lines)
    # the line is fitted to every sample, not only the reported ones
    assert doc["trend_anon"]["samples"] == len(samples)
    counts = doc["counts"]
    for kind in (
        "sent 1:1",
        "sent group",
        "received",
        "receipt sent",
        "history answers",
        "conversations answers",
        "reconnects",
        "slow reader sessions",
    ):
        assert counts.get(kind, 0) > 0, (kind, counts)
    assert counts["reconnects"] >= 3
    # the relay refused nothing and failed nothing: every error is a client's own departure
    assert doc["errors"] == {}, doc["errors"]
    assert doc["trend"]["samples"] == len(samples) and doc["db_bytes"] > 0


def test_the_heap_probes_read_this_process(tmp_path: Path) -> None:
    """The --trace figures, read from a real process (this one): smaps by kind, glibc's
    arenas from malloc_info, SQLite's and Python's own heaps."""
    import sqlite3

    from bench import soak_probe

    maps = soak_probe.smaps_kb(os.getpid())
    assert maps["heap"] + maps["anon"] > 1000 and maps["libs"] > 0 and maps["threads"] >= 1
    conn = sqlite3.connect(":memory:")  # SQLite's heap is in use while a connection is open
    soak_probe._malloc_info(tmp_path / "m.xml")
    arenas = soak_probe.arenas(tmp_path / "m.xml")
    assert arenas[0]["nr"] == 0 and arenas[0]["system"] > 0
    assert all(a["used"] == a["system"] - a["free"] >= 0 for a in arenas)
    figures = soak_probe.heap_figures(tmp_path / "stats.txt")
    conn.close()
    assert figures["sqlite_used"] > 0 and figures["malloc_used"] > 0
    assert figures["python_arenas"] >= 1 and figures["python_blocks"] > 100_000
    assert not (tmp_path / "stats.txt").exists()
