"""The scenarios: what load each one offers, against which servers, and which figures it yields.

Invariant: every figure is computed from what the load generator counted inside the measured
window and from the OS snapshots taken at that window's edges; nothing is estimated.
"""

from __future__ import annotations

import argparse
import resource
from dataclasses import dataclass, field
from typing import Any

from bench import mix, storm

ALL_SCENARIOS = (
    "pairwise",
    "mix",
    "pingpong",
    "rate",
    "sparse",
    "connections",
    "fanout",
    "idle",
    "c100k",
    "durable",
    "storm",
    "deflate",
    "search",
    "cluster",
)
# open-loop scenarios: a fixed offered rate, figures of keeping up with it
OPEN_LOOP = ("rate", "sparse", "connections", "cluster")
# scenarios run only when named in --scenarios (none today)
NAMED_SCENARIOS: tuple[str, ...] = ()
BASE_SERVERS = ("relay", "node-ws", "trio-websocket")
#: the mix scenario: the relay against the original design (which forwards frames unread)
MIX_SERVERS = ("relay", "node-ws")
# the load generator's calibration target (bench/nullrelay.py): only when asked for by name
NULL_SERVER = "null"
DURABLE_SERVERS = ("relay", "relay-sqlite")
#: how the storm's devices come back: within a second, uniformly; or as the client library's
#: default reconnect policy schedules its first attempt
STORM_SCHEDULES = ("uniform", "client-default")
# permessage-deflate on (the default) and off (--no-compression), same client offer
DEFLATE_SERVERS = ("relay", "relay-no-compression")
# the cluster scenario: one relay node on the PostgreSQL store, and three nodes on one
# PostgreSQL database and one Redis (bench/cluster.py)
CLUSTER_SERVERS = ("relay-postgres", "relay-cluster")

CLIENT_BOUND_CPU = 0.90  # a load generator above this share of its core may be the bottleneck
CONTENDED = 0.10  # waiting for the core over 10% of the window: other load skews the figure
STOLEN = 0.05  # the hypervisor took over 5% of a pinned core: latency tails are the machine's

# name: (full run, --quick)
DEFAULTS: dict[str, tuple[Any, Any]] = {
    "duration": (5.0, 0.5),
    "warmup": (1.0, 0.15),
    "clients": (100, 10),
    "inflight": (16, 4),
    "rates": ("20000,40000", "2000,4000"),
    "rate_clients": (100, 10),
    "fanout_members": (1000, 50),
    "fanout_inflight": (4, 2),
    "idle_connections": (10000, 200),
    "idle_hold": (2.0, 0.3),
    "text_bytes": (100, 100),
    "drain": (2.0, 0.5),
    "setup_timeout": (180.0, 20.0),
    "sparse_rate": (10000.0, 1000.0),
    "sparse_connections": ("1000,10000", "100,200"),
    "connections_rate": (20000.0, 2000.0),
    "connection_counts": ("100,1000,10000,50000", "10,100"),
    "c100k_connections": (100000, 400),
    # longer than the relay's heartbeat interval (20 s): every connection is pinged in it
    "c100k_hold": (25.0, 1.0),
    # Connections per source address (127.0.0.2, .3, ...) when a run has more: far under the
    # 28,232 ephemeral ports of one (source, destination) pair, because the kernel's search
    # for a free port at connect() grows with the ports in use (20,000 connections from one
    # address: 72% of the load generator's core went to __inet_hash_connect and
    # __inet_check_established for 8 s of the storm, and the relay waited idle for it);
    # --quick uses a small number so that its c100k run crosses several addresses too.
    "per_source": (2000, 100),
    "storm_devices": (20000, 200),
    "storm_backlog": (10, 3),
    "storm_spread": (1.0, 0.2),
    "history_messages": (50, 50),
    # the search scenario: messages stored before the relay starts, and who searches them
    "search_messages": (1_000_000, 5000),
    "search_users": (4, 2),
    "search_partners": (250, 10),
    # search@searching: searches a second at a fixed schedule, spread over the searching users
    "search_rate": (100.0, 100.0),
    # search@capacity: searches in flight, each connection's next sent on its answer
    "search_concurrency": (4, 2),
    "search_limit": (20, 20),
    "index_timeout": (900.0, 60.0),
    # the cluster scenario's fixed offered rate and its clients (pairs split over the nodes):
    # 500 msg/s, a rate the one PostgreSQL node keeps up with at 29-40% of its core (bench/
    # cluster.py has the figures); at 2,000 both setups were saturated and their p99s measured
    # capacity (1.66 s vs 0.35 s), not the cost of crossing nodes
    "cluster_rate": (500.0, 200.0),
    "cluster_clients": (60, 12),
}
#: the search scenario's runs, in this order, on one relay and its prefilled store: pairwise
#: messaging alone; the same with searches at a fixed rate (an open loop: what users produce,
#: the budgets' phase); the same with a closed loop of searches (the relay flat out, reported)
SEARCH_PHASES = ("alone", "searching", "capacity")
#: Descriptors a process keeps for itself beyond one per connection (listeners, epoll, logs).
FD_MARGIN = 200


@dataclass
class Run:
    """One scenario variant against one server: the key figures are named `<key>/<server>/<fig>`."""

    key: str  # "pairwise", "rate@20000", ...
    scenario: str
    servers: tuple[str, ...]
    loadgen: dict[str, Any]
    describe: str
    extra: dict[str, Any] = field(default_factory=dict)


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """Every size and duration, from the flags or from the full/quick defaults."""
    out = {}
    for name, (full, quick) in DEFAULTS.items():
        value = getattr(args, name, None)
        out[name] = value if value is not None else (quick if args.quick else full)
    out["rates"] = [float(r) for r in str(out["rates"]).split(",") if r.strip()]
    for name in ("sparse_connections", "connection_counts"):
        out[name] = [int(c) for c in str(out[name]).split(",") if c.strip()]
    out["fd_limit"] = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return out


def capped(count: int, fd_limit: int) -> tuple[int, str]:
    """`count` connections, or as many as a process with `fd_limit` descriptors can hold
    (even, for pairs); and a note when it had to be capped."""
    if fd_limit == resource.RLIM_INFINITY or count + FD_MARGIN <= fd_limit:
        return count, ""
    n = max(2, (fd_limit - FD_MARGIN) // 2 * 2)
    return n, (
        f"capped from {count:,} to {n:,} connections: the descriptor hard limit here is "
        f"{fd_limit:,} (raise it with `ulimit -Hn` as root, or LimitNOFILE= in systemd)"
    )


def open_loop(n: int, rate: float, timing: dict[str, Any], per_source: int) -> dict[str, Any]:
    cfg: dict[str, Any] = {"mode": "open", "clients": n, "rate": rate, **timing}
    if n > per_source:
        cfg["per_source"] = per_source
    return cfg


def plan(names: list[str], s: dict[str, Any]) -> list[Run]:
    timing = {
        "warmup": s["warmup"],
        "duration": s["duration"],
        "drain": s["drain"],
        "text_bytes": s["text_bytes"],
        "setup_timeout": s["setup_timeout"],
    }
    runs: list[Run] = []
    for name in names:
        if name == "pairwise":
            runs.append(
                Run(
                    "pairwise",
                    name,
                    (*BASE_SERVERS, NULL_SERVER),
                    {"mode": "closed", "clients": s["clients"], "window": s["inflight"], **timing},
                    f"{s['clients']} clients in {s['clients'] // 2} pairs, "
                    f"{s['inflight']} in flight each",
                )
            )
        elif name == "mix":
            runs.append(
                Run(
                    "mix",
                    name,
                    MIX_SERVERS,
                    {
                        "mode": "closed",
                        "clients": s["clients"],
                        "window": s["inflight"],
                        "bodies": mix.BODIES,
                        "pattern": mix.PATTERN,
                        **timing,
                    },
                    f"pairwise with realistic frames ({s['clients']} clients, {s['inflight']} in "
                    "flight each): a third with meta, a sixth end-to-end encrypted for three "
                    "devices, a sixth with an uploaded attachment",
                )
            )
        elif name == "pingpong":
            runs.append(
                Run(
                    "pingpong",
                    name,
                    (*BASE_SERVERS, NULL_SERVER),
                    {"mode": "closed", "clients": 2, "window": 1, "senders": "even", **timing},
                    "one pair, one message in flight",
                )
            )
        elif name == "rate":
            for rate in s["rates"]:
                runs.append(
                    Run(
                        f"rate@{rate:g}",
                        name,
                        (*BASE_SERVERS, NULL_SERVER),
                        {"mode": "open", "clients": s["rate_clients"], "rate": rate, **timing},
                        f"open loop at {rate:,.0f} msg/s over {s['rate_clients']} clients",
                        {"rate": rate},
                    )
                )
        elif name == "sparse":
            # real chat traffic: many connections, each sending now and then, one message
            # per wake-up; against node-ws and the null floor
            rate = s["sparse_rate"]
            for count in s["sparse_connections"]:
                n, note = capped(count, s["fd_limit"])
                runs.append(
                    Run(
                        f"sparse@{count}",
                        name,
                        ("relay", "node-ws", NULL_SERVER),
                        open_loop(n, rate, timing, s["per_source"]),
                        f"open loop at {rate:,.0f} msg/s over {n:,} connections"
                        + (f" ({note})" if note else ""),
                        {"rate": rate, "connections": n, "note": note},
                    )
                )
        elif name == "connections":
            rate = s["connections_rate"]
            for count in s["connection_counts"]:
                n, note = capped(count, s["fd_limit"])
                runs.append(
                    Run(
                        f"conns@{count}",
                        name,
                        ("relay", "node-ws"),
                        open_loop(n, rate, timing, s["per_source"]),
                        f"open loop at {rate:,.0f} msg/s over {n:,} connections"
                        + (f" ({note})" if note else ""),
                        {"rate": rate, "connections": n, "note": note},
                    )
                )
        elif name == "fanout":
            runs.append(
                Run(
                    "fanout",
                    name,
                    (*BASE_SERVERS, NULL_SERVER),
                    {
                        "mode": "fanout",
                        "clients": s["fanout_members"],
                        "window": s["fanout_inflight"],
                        **timing,
                    },
                    f"1 sender, group of {s['fanout_members']}, {s['fanout_inflight']} in flight",
                )
            )
        elif name == "idle":
            runs.append(
                Run(
                    "idle",
                    name,
                    (*BASE_SERVERS, NULL_SERVER),
                    {
                        "mode": "idle",
                        "clients": s["idle_connections"],
                        "hold": s["idle_hold"],
                        "connect_concurrency": 256,
                        "setup_timeout": s["setup_timeout"],
                    },
                    f"{s['idle_connections']:,} authenticated idle connections",
                )
            )
        elif name == "c100k":
            n, note = capped(s["c100k_connections"], s["fd_limit"])
            cfg = {
                "mode": "idle",
                "clients": n,
                "hold": s["c100k_hold"],
                "connect_concurrency": 1024,
                "setup_timeout": s["setup_timeout"],
                "canary": True,
            }
            if n > s["per_source"]:
                cfg["per_source"] = s["per_source"]
            runs.append(
                Run(
                    "c100k",
                    name,
                    ("relay", "node-ws"),
                    cfg,
                    f"{n:,} authenticated connections held {s['c100k_hold']:g} s (a heartbeat "
                    "round), a canary pair exchanging a message every 10 ms"
                    + (f" ({note})" if note else ""),
                    {"connections": n, "note": note},
                )
            )
        elif name == "storm":
            n, note = capped(s["storm_devices"] + 2, s["fd_limit"])
            for schedule in STORM_SCHEDULES:
                when = (
                    f"within {s['storm_spread']:g} s"
                    if schedule == "uniform"
                    else "when the client library's default ReconnectPolicy retries"
                )
                runs.append(
                    Run(
                        f"storm@{schedule}",
                        name,
                        ("relay-sqlite",),
                        {
                            "mode": "storm",
                            "clients": n,
                            "backlog": s["storm_backlog"],
                            "connect_concurrency": 1_000_000,
                            "setup_timeout": s["setup_timeout"],
                            "text_bytes": s["text_bytes"],
                            **({"per_source": s["per_source"]} if n > s["per_source"] else {}),
                        },
                        f"{n - 2:,} devices with {s['storm_backlog']} backlog messages each "
                        f"in SQLite reconnect {when} to a freshly started relay; "
                        "a canary pair exchanges a message every 10 ms"
                        + (f" ({note})" if note else ""),
                        {"schedule": schedule, "devices": n - 2, "note": note},
                    )
                )
        elif name == "durable":
            runs.append(
                Run(
                    "durable",
                    name,
                    DURABLE_SERVERS,
                    {"mode": "closed", "clients": s["clients"], "window": s["inflight"], **timing},
                    "pairwise, in-memory store vs SQLite --db <tmpfile>",
                )
            )
        elif name == "deflate":
            runs.append(
                Run(
                    "deflate",
                    name,
                    DEFLATE_SERVERS,
                    {
                        "mode": "deflate",
                        "module": "bench.deflate",
                        "clients": 2,
                        "messages": s["history_messages"],
                        **timing,
                    },
                    f"a {s['history_messages']}-message history page ({s['text_bytes']}-char "
                    "texts) fetched over and over, permessage-deflate offered",
                )
            )
        elif name == "search":
            for phase in SEARCH_PHASES:
                runs.append(
                    Run(
                        f"search@{phase}",
                        name,
                        ("relay-sqlite",),
                        {
                            "mode": "closed",
                            "clients": s["clients"],
                            "window": s["inflight"],
                            **timing,
                        },
                        f"pairwise ({s['clients']} clients, {s['inflight']} in flight each) on "
                        f"{s['search_messages']:,} stored messages"
                        + {
                            "alone": ", no search",
                            "searching": f", {s['search_rate']:g} searches/s meanwhile (open "
                            f"loop over {s['search_users']} users' connections)",
                            "capacity": f", {s['search_concurrency']} searches in flight "
                            "meanwhile (closed loop: the relay's search capacity)",
                        }[phase],
                        {"phase": phase},
                    )
                )
        elif name == "cluster":
            runs += cluster_runs(s, timing)
        else:
            known = ", ".join((*ALL_SCENARIOS, *NAMED_SCENARIOS))
            raise ValueError(f"unknown scenario {name!r}; known: {known}")
    return runs


def cluster_runs(s: dict[str, Any], timing: dict[str, Any]) -> list[Run]:
    """The same open-loop pairwise load on one PostgreSQL node and on three nodes with each
    pair's two users on different nodes (the load generator's `ports`, filled in by the
    harness); then closed-loop durable throughput of the PostgreSQL store against SQLite."""
    rate, n = s["cluster_rate"], s["cluster_clients"]
    load = {"mode": "open", "clients": n, "rate": rate, **timing}
    return [
        Run(
            "cluster@one-node",
            "cluster",
            ("relay-postgres",),
            load,
            f"open loop at {rate:,.0f} msg/s over {n} clients in pairs, one node on PostgreSQL",
            {"rate": rate, "nodes": 1},
        ),
        Run(
            "cluster@three-nodes",
            "cluster",
            ("relay-cluster",),
            load,
            f"open loop at {rate:,.0f} msg/s over {n} clients in pairs, each pair's users on "
            "different nodes of three (one PostgreSQL, one Redis)",
            {"rate": rate, "nodes": 3},
        ),
        Run(
            "cluster@durable",
            "durable",
            ("relay-sqlite", "relay-postgres"),
            {"mode": "closed", "clients": s["clients"], "window": s["inflight"], **timing},
            f"pairwise closed loop ({s['clients']} clients, {s['inflight']} in flight each), "
            "SQLite vs PostgreSQL store",
        ),
    ]


def figures(run: Run, raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The figures of one measured run, and the problems that make it invalid (empty: valid)."""
    problems: list[str] = []
    before, after = raw["before"], raw["after"]
    window = after["t"] - before["t"]
    fig: dict[str, Any] = {
        "window_s": round(window, 3),
        "server_cpu": (after["server_cpu_s"] - before["server_cpu_s"]) / window,
        "loadgen_cpu": (after["loadgen_cpu_s"] - before["loadgen_cpu_s"]) / window,
    }
    if "server_runq_s" in after:
        # share of the window each side was runnable but waiting for its core: other load
        fig["server_waited"] = (after["server_runq_s"] - before["server_runq_s"]) / window
        fig["loadgen_waited"] = (after["loadgen_runq_s"] - before["loadgen_runq_s"]) / window
        fig["contended"] = max(fig["server_waited"], fig["loadgen_waited"]) > CONTENDED
    if "server_steal_s" in after:
        # share of the window the hypervisor ran something else on each side's core
        fig["server_steal"] = (after["server_steal_s"] - before["server_steal_s"]) / window
        fig["loadgen_steal"] = (after["loadgen_steal_s"] - before["loadgen_steal_s"]) / window
        fig["stolen"] = max(fig["server_steal"], fig["loadgen_steal"]) > STOLEN
    if raw.get("closed"):
        problems.append(
            f"{raw['closed']} connections closed during the run "
            f"(first error: {raw.get('first_error')})"
        )
    if run.scenario == "deflate":
        pages = raw["pages"]
        fig.update(
            pages=pages,
            pages_per_s=pages / window,
            page_bytes=raw["page_json_bytes"],
            wire_bytes_per_page=raw["wire_bytes"] / pages if pages else None,
            cpu_us_per_page=(
                (after["server_cpu_s"] - before["server_cpu_s"]) * 1e6 / pages if pages else None
            ),
            compressed=raw["compressed"],
            client_bound=False,
        )
        if not pages:
            problems.append("no history page fetched in the window")
        return fig, problems
    if run.extra.get("note"):
        fig["note"] = run.extra["note"]
    if run.scenario == "storm":
        canary = raw.get("canary") or {}
        fig.update(
            devices=raw["storm_clients"],
            backlogs_complete=raw["backlogs_complete"],
            storm_s=raw["storm_s"],
            schedule_s=raw["schedule_s"],
            peak_rss_mb=raw["peak_rss_kb"] / 1024,
            canary_messages=canary.get("count"),
            p50_ms=canary.get("p50_ms"),
            p99_ms=canary.get("p99_ms"),
            max_ms=canary.get("max_ms"),
        )
        health = raw.get("healthz") or {}
        fig.update(
            healthz_probes=health.get("probes"),
            healthz_p99_ms=health.get("p99_ms"),
            healthz_max_ms=health.get("max_ms"),
        )
        fig["client_bound"] = False
        if health.get("failed"):
            problems.append(
                f"{health['failed']} of {health['probes']} /healthz probes got no 200 within "
                f"{storm.PROBE_TIMEOUT:g} s during the storm (first: {health['first_error']})"
            )
        if raw["storm_s"] is None:
            problems.append(
                f"only {raw['backlogs_complete']:,} of {raw['storm_clients']:,} backlogs arrived "
                f"(first error: {raw.get('first_error')})"
            )
        if not canary.get("count"):
            problems.append("the canary pair exchanged no message during the storm")
        return fig, problems
    if run.scenario in ("idle", "c100k"):
        n = raw["clients"]
        fig.update(
            connections=n,
            kb_per_conn=(after["server_rss_kb"] - before["server_rss_kb"]) / n,
            server_rss_mb=after["server_rss_kb"] / 1024,
            connect_rate=raw["connect_rate"],
        )
        canary = raw.get("canary")
        if canary is not None:
            if not canary.get("count"):
                problems.append("the canary pair exchanged no message during the hold")
            fig.update(
                canary_messages=canary.get("count"),
                p50_ms=canary.get("p50_ms"),
                p99_ms=canary.get("p99_ms"),
                max_ms=canary.get("max_ms"),
                pings_answered=raw.get("pings_answered"),
            )
        fig["client_bound"] = False
        return fig, problems

    lat = raw["latency"]
    fig["client_bound"] = fig["loadgen_cpu"] > CLIENT_BOUND_CPU
    fig.update(
        delivered_per_s=raw["delivered_per_s"],
        receipts_per_s=raw["receipts_per_s"],
        p50_ms=lat.get("p50_ms"),
        p99_ms=lat.get("p99_ms"),
        p999_ms=lat.get("p999_ms"),
        max_ms=lat.get("max_ms"),
    )
    if raw["delivered_per_s"] > 0:
        # what each delivery cost the server: where a latency budget is missed, this next to
        # the floor's says how much of the machine the server's own work takes
        fig["cpu_us_per_msg"] = fig["server_cpu"] * 1e6 / raw["delivered_per_s"]
        if "server_sys_s" in after:
            # of which the kernel's (stime: its system calls); the rest is the server's own
            # code, which the null floor has next to none of
            sys_share = (after["server_sys_s"] - before["server_sys_s"]) / window
            fig["sys_us_per_msg"] = sys_share * 1e6 / raw["delivered_per_s"]
    if run.extra.get("connections"):
        fig["connections"] = run.extra["connections"]
    if run.extra.get("nodes"):
        fig["nodes"] = run.extra["nodes"]
    if raw["delivered"] == 0:
        if run.scenario in OPEN_LOOP and not raw.get("closed"):
            # an overloaded server that stops delivering is a result of an open loop
            fig["note"] = "no message delivered in the window"
        else:
            problems.append(
                f"nothing delivered in the window (first error: {raw.get('first_error')})"
            )
    if raw.get("total_failed"):
        problems.append(
            f"{raw['total_failed']} messages refused by the server "
            f"(first: {raw.get('first_error')})"
        )
    if raw.get("total_errors"):
        problems.append(f"{raw['total_errors']} error frames (first: {raw.get('first_error')})")
    if run.scenario == "search":
        problems += search_figures(run, raw, fig)
    if run.scenario == "fanout":
        fig["messages_per_s"] = raw["messages_per_s"]
        fig["delivery_p99_ms"] = raw["delivery_latency"].get("p99_ms")
        if raw.get("echoes"):
            problems.append(f"{raw['echoes']} group messages echoed to the sending connection")
    if run.scenario in OPEN_LOOP:
        offered = raw["offered_per_s"]
        fig.update(
            offered_per_s=offered,
            sent_per_s=raw["sent_per_s"],
            send_lag_p99_ms=raw["send_lag"].get("p99_ms"),
            backlog_at_end=raw["backlog_at_end"],
        )
        # Kept up: the generator offered the rate, the server delivered at least 99% of it
        # in the window, and the messages in flight did not grow over the window (by more
        # than 1% of what was sent): a steady state, whatever its latency.
        growth = raw["backlog_at_end"] - raw["backlog_at_start"]
        fig["backlog_growth"] = growth
        fig["kept_up"] = bool(
            raw["sent_per_s"] >= 0.99 * offered
            and raw["delivered_per_s"] >= 0.99 * offered
            and growth <= max(0.01 * raw["sent"], 10)
            and not raw.get("blocked_sends")
        )
        if raw["sent_per_s"] < 0.99 * offered:
            fig["client_bound"] = True  # the generator could not hold its own schedule
    return fig, problems


def search_figures(run: Run, raw: dict[str, Any], fig: dict[str, Any]) -> list[str]:
    """The search scenario's own figures, added to `fig`: how long the relay took to index the
    prefilled store, and (with searches) the search client's throughput and latency; of the
    open loop (search@searching) also the offered rate and whether the relay kept up with it
    (every search due in the window answered, at the offered rate)."""
    problems: list[str] = []
    index = raw.get("index") or {}
    fig["index_messages"] = index.get("messages")
    fig["index_s"] = index.get("seconds")
    fig["unindexed_after"] = index.get("unindexed_after")
    if run.extra["phase"] == "alone":
        return problems
    found = raw.get("search") or {}
    if "error" in found:
        return [f"search client: {found['error']}"]
    fig.update(
        searches=found["searches"],
        searches_per_s=found["searches_per_s"],
        search_p50_ms=found["p50_ms"],
        search_p99_ms=found["p99_ms"],
        search_max_ms=found["max_ms"],
        search_empty=found["empty_results"],
    )
    if found["mode"] == "open":
        fig.update(
            search_rate=found["rate"],
            search_due=found["due"],
            search_unanswered=found["unanswered"],
            search_kept_up=found["kept_up"],
            search_send_lag_p99_ms=found["send_lag_p99_ms"],
        )
    if not found["searches"]:
        problems.append("no search completed in the window")
    if found["searches"] and found["empty_results"] == found["searches"]:
        problems.append("every search came back empty: the searchers reach no stored message")
    if found["errors"]:
        problems.append(
            f"{found['errors']} searches answered with an error (first: {found['first_error']})"
        )
    return problems
