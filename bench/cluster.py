"""The servers of the cluster scenario: relay nodes on a PostgreSQL database and a Redis of the
bench's own, started and stopped as one server under test.

Invariants:
- Each start creates a new database on the machine's PostgreSQL (127.0.0.1:5432, user postgres,
  trust auth; RELAY_BENCH_PG_* to change) and each stop drops it: no run sees another's rows.
- `relay-cluster` also starts a redis-server of its own on a free port, without persistence
  (`--save '' --appendonly no`), killed at stop.
- Every node is pinned to the server core, as the single server of the other scenarios is: the
  three nodes share one core, so the cross-node figures compare the same CPU budget against one
  node, and CPU per message is the sum over the node processes. PostgreSQL and Redis are not
  counted and not pinned (the machine's own services, as a deployment's would be).
- When PostgreSQL or redis-server is missing, `unavailable()` says so in one line.

The offered rate (500 msg/s, bench/scenarios.py `cluster_rate`) is one the one node keeps up
with unsaturated: 29-40% of its core, 580-800 us/msg (at this rate its PostgreSQL writer commits
a message or two per transaction, so the per-message CPU is mostly a transaction's). At 2,000
msg/s both setups were saturated (p99 1.66 s vs 0.35 s): a capacity figure, not the cost of
crossing nodes. Measured 2026-12-05, medians of three runs, relay.cluster.resp in place:
- load 0.6-3.2: one node p50 2.8 ms, p99 24.1 ms; three nodes p50 16.5 ms, p99 53.6 ms,
  1,097 us/msg summed over the nodes (coredis's publish and pub/sub before it, same hour:
  p50 23.1 ms, p99 88.4 ms, 1,310 us/msg);
- load 6.9-10.6: one node p99 87.7 ms, three nodes 551.9 ms (single runs at 200-1,000 msg/s
  and loads 5.5-9.3: one-node p99 117-469 ms, at every rate).
So the one-node p99 is flat only on a quiet machine, and the cross-node p99 there still misses
the +2 ms budget: the three nodes share the one server core and wait 43-57% of their run time
for it. Not the Redis hop: one message at a time on an idle cluster takes p50 2.5 ms from a
sender on one node to a recipient on another, 2.8 ms on one node (the commit dominates both).

The PostgreSQL writer in pipeline mode (relay/store/postgres/writer.py, PIPELINE: an append
batch in two round trips, was ten or eleven; a batch of delivery marks in one per round, was
one per mark), and gathering 2 ms before a commit as the SQLite writer does (it had 0): three
alternating pairs of runs against the tree before, 2026-12-05 12:29-12:33, load 1.4-2.4,
medians (before -> after):
- one node: p50 2.7 -> 3.7 ms, p99 28.5 -> 15.1 ms, 856 -> 524 us/msg;
- three nodes: p50 14.0 -> 4.7 ms, p99 48.7 -> 12.1 ms, 1,280 -> 960 us/msg summed over nodes;
  cross-node p99 minus one-node p99 in each pair +19.8/+23.3/+30.8 -> -2.6/-3.0/-0.1 ms: the
  budget met in all three;
- durable throughput, PostgreSQL 21,418 -> 33,593 msg/s (28-30 -> 15-16 us/msg); SQLite
  73,125 and 73,581 msg/s in the same runs.
Pipeline mode alone (commit_interval 0) cut the writer's CPU per transaction about in half
(one store, one message per batch: 875 -> 390 us of writer-thread CPU per append) but not the
CPU per message at 500 msg/s: shorter commits gathered fewer messages, 1.07 per append
transaction against 1.72 before (each node's first 500 append transactions of a three-node
run); the 2 ms gather is what turned it into CPU per message (two pairs at load 1.4-2.4, 0 vs
2 ms: one node 688-696 vs 456-488 us/msg, three nodes 1,109-1,152 vs 880-896), at the cost of
the one node's p50 (1.4-1.6 vs 3.4-3.6 ms in those pairs). Earlier, at
load 4.4-6.0, pipeline mode without the gather: cross-node p99 +36 -> +11.5 ms over one node.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from bench import servers

PG_HOST = os.environ.get("RELAY_BENCH_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("RELAY_BENCH_PG_PORT", "5432"))
PG_USER = os.environ.get("RELAY_BENCH_PG_USER", "postgres")
#: one node on the PostgreSQL store; three nodes on one PostgreSQL database and one Redis
ONE_NODE = "relay-postgres"
THREE_NODES = "relay-cluster"
NODES = {ONE_NODE: 1, THREE_NODES: 3}
DB_PLACEHOLDER = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/<per-run database>"


def _admin_url() -> str:
    return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/postgres"


def unavailable(name: str) -> str | None:
    """Why server `name` cannot run on this machine, in one line; None when it can."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install -e .)"
    try:
        with psycopg.connect(_admin_url(), connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"PostgreSQL is not reachable at {PG_HOST}:{PG_PORT} as {PG_USER} ({first})"
    if NODES[name] > 1 and shutil.which("redis-server") is None:
        return "redis-server is not on PATH (apt-get install redis-server)"
    return None


def spec(name: str) -> servers.ServerSpec:
    """The argv every node of `name` runs (the database URL is made per run)."""
    base = servers.relay_spec(DB_PLACEHOLDER)
    argv = list(base.argv)
    note = base.note
    if NODES[name] > 1:
        argv += ["--redis-url", "redis://127.0.0.1:<free port>/0"]
        note += (
            f"; {NODES[name]} nodes on one PostgreSQL database and one redis-server, "
            "all pinned to the server core"
        )
    else:
        note += "; one node, PostgreSQL store"
    return servers.ServerSpec(name, argv, env=base.env, note=note)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise servers.ServerError("redis-server is not on PATH")
    port = _free_port()
    proc = subprocess.Popen(
        [
            exe,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.5) as s,
        ):
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return proc, port
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    raise servers.ServerError(f"redis-server did not answer PING on port {port}")


@dataclass
class RunningCluster:
    """Several relay processes measured as one server: `port`/`pid` are the first node's,
    `ports`/`pids` every node's."""

    spec: servers.ServerSpec
    nodes: list[servers.RunningServer]
    db_name: str
    redis: subprocess.Popen[bytes] | None

    @property
    def port(self) -> int:
        return self.nodes[0].port

    @property
    def pid(self) -> int:
        return self.nodes[0].pid

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    @property
    def pids(self) -> list[int]:
        return [n.pid for n in self.nodes]

    def alive(self) -> bool:
        return all(n.alive() for n in self.nodes) and (
            self.redis is None or self.redis.poll() is None
        )

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(
            f"[node {k}] {n.log_tail(lines)}" for k, n in enumerate(self.nodes) if n.log_tail()
        )

    def stop(self, timeout: float = 5.0) -> None:
        for n in self.nodes:
            n.stop(timeout)
        if self.redis is not None:
            self.redis.kill()
            self.redis.wait()
            self.redis = None
        _drop(self.db_name)


def _drop(db_name: str) -> None:
    import psycopg

    with (
        contextlib.suppress(psycopg.Error),
        psycopg.connect(_admin_url(), autocommit=True) as admin,
    ):
        admin.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


def start(name: str, log_dir: Path, stem: str, workdir: Path, cpu: int | None) -> RunningCluster:
    """A new database (and for several nodes a new redis-server), then every node on them."""
    import psycopg

    db_name = f"relay_bench_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(_admin_url(), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{db_name}"')
    except psycopg.Error as exc:
        raise servers.ServerError(f"cannot create the bench database: {exc}") from None
    db_url = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{db_name}"
    base = spec(name)
    redis: subprocess.Popen[bytes] | None = None
    nodes: list[servers.RunningServer] = []
    try:
        argv = [db_url if a == DB_PLACEHOLDER else a for a in base.argv]
        if NODES[name] > 1:
            redis, redis_port = _start_redis(workdir)
            argv[argv.index("--redis-url") + 1] = f"redis://127.0.0.1:{redis_port}/0"
        node_spec = servers.ServerSpec(name, argv, env=base.env, note=base.note)
        for k in range(NODES[name]):
            # one at a time: the first applies the store's migrations, the others find them
            nodes.append(servers.start(node_spec, log_dir / f"{stem}-node{k}.log", cpu))
    except BaseException:
        for n in nodes:
            n.stop()
        if redis is not None:
            redis.kill()
            redis.wait()
        _drop(db_name)
        raise
    return RunningCluster(node_spec, nodes, db_name, redis)
