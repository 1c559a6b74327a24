"""The cluster scenario's servers (bench/cluster.py) where PostgreSQL or redis-server is
missing: reported unavailable with the reason in one line, never a crash."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bench import cluster

ROOT = Path(__file__).resolve().parent.parent


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_machine_without_postgresql_reports_both_cluster_servers_unavailable(
    tmp_path: Path,
) -> None:
    out = tmp_path / "run.json"
    env = {
        "PATH": str(tmp_path),  # no redis-server either
        "RELAY_BENCH_PG_PORT": str(_closed_port()),
    }
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "bench", "--quick", "--no-budgets", "--no-chart"),
            *("--scenarios", "cluster", "--servers", "relay-postgres,relay-cluster"),
            *("--json", str(out)),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    reasons = doc["servers_unavailable"]
    assert set(reasons) == {"relay-postgres", "relay-cluster"}
    for name, why in reasons.items():
        assert "PostgreSQL is not reachable" in why and "\n" not in why, why
        assert f"{name} skipped: {why}" in proc.stdout
    assert doc["runs"] == [] and doc["errors"] == []
    # the cluster budget is judged as unmeasured, not passed
    (verdict,) = [b for b in doc["budgets"] if b["name"].startswith("cluster:")]
    assert verdict["status"] == "FAIL" and "not measured" in verdict["detail"]
    assert "Traceback" not in proc.stdout + proc.stderr


def test_without_redis_server_only_the_three_nodes_are_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert cluster.unavailable("relay-postgres") is None
    assert cluster.unavailable("relay-cluster") == (
        "redis-server is not on PATH (apt-get install redis-server)"
    )
