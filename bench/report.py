"""Presenting one run: the summary table, the JSON file of every figure, the PNG chart.

Invariant: the table and the chart are drawn from the same summary that budgets are checked
against; the JSON holds that summary plus every repeat's raw load-generator output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: run keys of the open-loop scenarios (rate@N, sparse@N connections, conns@N connections)
OPEN_LOOP_KEYS = ("rate@", "sparse@", "conns@")
#: run keys whose figures are per connection count: the chart's third panel
BY_CONNECTIONS = ("sparse@", "conns@")


def _num(v: Any, fmt: str) -> str:
    return format(v, fmt) if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def table(summary: dict[str, dict[str, dict[str, Any]]], order: list[str]) -> str:
    head = (
        f"{'scenario':<12} {'server':<15} {'msg/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'p99.9 ms':>9} {'srv cpu':>7} {'µs/msg':>6} {'of sys':>6} {'lg cpu':>6}  notes"
    )
    lines = [head, "-" * len(head)]
    for key in order:
        for server, fig in summary.get(key, {}).items():
            notes = []
            if key.startswith(("idle", "c100k")):
                notes.append(
                    f"{_num(fig.get('connections'), ',.0f')} conns, "
                    f"{_num(fig.get('kb_per_conn'), '.1f')} kB/conn, "
                    f"{_num(fig.get('connect_rate'), ',.0f')} conn/s, "
                    f"RSS {_num(fig.get('server_rss_mb'), '.0f')} MB"
                )
            if key.startswith(OPEN_LOOP_KEYS):
                notes.append("kept up" if fig.get("kept_up") else "DID NOT KEEP UP")
                notes.append(f"offered {_num(fig.get('offered_per_s'), ',.0f')}/s")
            if key == "deflate":
                notes.append(
                    f"{_num(fig.get('wire_bytes_per_page'), ',.0f')} B/page on the wire "
                    f"({_num(fig.get('page_bytes'), ',.0f')} B as text), "
                    f"{_num(fig.get('cpu_us_per_page'), ',.0f')} µs server CPU/page, "
                    f"{_num(fig.get('pages_per_s'), ',.0f')} pages/s"
                )
            if key.startswith("storm"):
                notes.append(
                    f"{_num(fig.get('devices'), ',.0f')} devices: backlogs in "
                    f"{_num(fig.get('storm_s'), '.2f')} s, peak RSS "
                    f"{_num(fig.get('peak_rss_mb'), '.0f')} MB; latency: the canary's, "
                    # one message in flight: a message held up for seconds is one sample of p99
                    f"max {_num(fig.get('max_ms'), ',.0f')} ms"
                )
            if key == "fanout":
                notes.append(
                    f"{_num(fig.get('messages_per_s'), ',.0f')} msg/s; latency to last member"
                )
            if fig.get("client_bound"):
                notes.append("CLIENT-BOUND")
            if fig.get("contended"):
                notes.append(
                    f"contended (waited for a core: server {_num(fig.get('server_waited'), '.0%')}, "
                    f"loadgen {_num(fig.get('loadgen_waited'), '.0%')})"
                )
            if fig.get("stolen"):
                notes.append(
                    f"steal (hypervisor took: server core {_num(fig.get('server_steal'), '.0%')}, "
                    f"loadgen core {_num(fig.get('loadgen_steal'), '.0%')})"
                )
            if server == "null" and key.startswith(OPEN_LOOP_KEYS):
                notes.append("floor: C server doing nothing else")
            if fig.get("note"):
                notes.append(str(fig["note"]))
            if fig.get("error"):
                notes.append("ERROR: " + str(fig["error"])[:60])
            if fig.get("repeats", 1) > 1:
                notes.append(f"median of {fig['repeats']}")
            lines.append(
                f"{key:<12} {server:<15} {_num(fig.get('delivered_per_s'), ',.0f'):>10} "
                f"{_num(fig.get('p50_ms'), '.3f'):>8} {_num(fig.get('p99_ms'), '.3f'):>8} "
                f"{_num(fig.get('p999_ms'), '.3f'):>9} {_num(fig.get('server_cpu'), '.0%'):>7} "
                f"{_num(fig.get('cpu_us_per_msg'), '.1f'):>6} "
                f"{_num(fig.get('sys_us_per_msg'), '.1f'):>6} "
                f"{_num(fig.get('loadgen_cpu'), '.0%'):>6}  {'; '.join(notes)}"
            )
    return "\n".join(lines)


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")


def chart(path: Path, summary: dict[str, dict[str, dict[str, Any]]], order: list[str]) -> str:
    """Draw throughput and latency percentiles per server; returns a one-line status."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "chart skipped: matplotlib is not installed (pip install -e '.[bench]')"

    keys = [
        k
        for k in order
        if not k.startswith(("idle", "c100k", "storm"))
        and any(f.get("delivered_per_s") or f.get("p99_ms") for f in summary.get(k, {}).values())
    ]
    if not keys:
        return "chart skipped: no throughput or latency figures"
    servers: list[str] = []
    for k in keys:
        for s in summary[k]:
            if s not in servers:
                servers.append(s)
    by_conns = [k for k in keys if k.startswith(BY_CONNECTIONS)]
    rows = 3 if by_conns else 2
    # each scenario's slot holds only the servers that ran it (at most four of the nine), so
    # the width follows the scenarios: a full run's 21 charted ones stay readable at 100 dpi
    fig, axes = plt.subplots(rows, 1, figsize=(min(28.0, max(8.0, 0.9 * len(keys))), 4.5 * rows))
    ax_t, ax_l = axes[0], axes[1]
    if by_conns:
        _by_connections(axes[2], summary, by_conns, servers)
    labelled: set[str] = set()
    for j, key in enumerate(keys):
        present = [s for s in servers if s in summary[key]]
        width = 0.8 / len(present)
        for n, server in enumerate(present):
            i = servers.index(server)
            x = j - 0.4 + (n + 0.5) * width
            f = summary[key][server]
            first = server not in labelled
            labelled.add(server)
            y = f.get("delivered_per_s")
            if isinstance(y, (int, float)) and y > 0:
                ax_t.bar([x], [y], width, color=f"C{i}", label=server if first else None)
            for pct, marker in (("p50_ms", "o"), ("p99_ms", "^"), ("p999_ms", "s")):
                ly = f.get(pct)
                if isinstance(ly, (int, float)) and ly > 0:
                    ax_l.scatter(
                        [x],
                        [ly],
                        marker=marker,
                        color=f"C{i}",
                        label=f"{server} {pct[:-3]}" if first else None,
                    )
    for ax in (ax_t, ax_l):
        ax.set_xticks(list(range(len(keys))))
        ax.set_xticklabels(keys, rotation=30, ha="right", fontsize=8)
        ax.set_xlim(-0.6, len(keys) - 0.4)
    ax_t.set_yscale("log")
    ax_t.set_ylabel("delivered messages / s (log)")
    ax_t.set_title("throughput (fan-out: deliveries/s)")
    ax_l.set_yscale("log")
    ax_l.set_ylabel("latency, ms (log)")
    ax_l.set_title("latency p50 / p99 / p99.9 (fan-out: to the last member)")
    # the legends go in a band of decades added above the data, not over it
    for ax, decades, size in ((ax_t, 10, 8), (ax_l, 1000, 7)):
        low, high = ax.get_ylim()
        ax.set_ylim(low, high * decades)
        ax.legend(fontsize=size, ncol=len(servers), loc="upper center")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"chart: {path}"


def _by_connections(
    ax: Any, summary: dict[str, dict[str, dict[str, Any]]], keys: list[str], servers: list[str]
) -> None:
    """CPU per message (bars' left axis) and p99 (right axis) against the connection count,
    one line per (scenario, server): where the per-wake-up cost shows."""
    ax_p = ax.twinx()
    for prefix, style in (("sparse@", "-"), ("conns@", "--")):
        for i, server in enumerate(servers):
            pts = []
            for k in keys:
                f = summary[k].get(server, {})
                if k.startswith(prefix) and isinstance(f.get("connections"), (int, float)):
                    pts.append((f["connections"], f.get("cpu_us_per_msg"), f.get("p99_ms")))
            pts.sort()
            cpu = [(n, c) for n, c, _ in pts if isinstance(c, (int, float))]
            p99 = [(n, p) for n, _, p in pts if isinstance(p, (int, float))]
            name = prefix.rstrip("@")
            if cpu:
                ax.plot(
                    *zip(*cpu, strict=True),
                    style,
                    marker="o",
                    color=f"C{i}",
                    label=f"{server} {name} µs/msg",
                )
            if p99:
                ax_p.plot(
                    *zip(*p99, strict=True),
                    style,
                    marker="^",
                    color=f"C{i}",
                    alpha=0.5,
                    label=f"{server} {name} p99",
                )
    ax.set_xscale("log")
    ax.set_xlabel("connections")
    ax.set_ylabel("server CPU per message, µs (o)")
    ax_p.set_yscale("log")
    ax_p.set_ylabel("p99, ms (^, log)")
    ax.set_title("open loop: CPU per message and p99 against connection count")
    ax.legend(fontsize=7, loc="upper left")
    ax_p.legend(fontsize=7, loc="upper right")
