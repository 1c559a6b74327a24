"""Presenting one run: the summary table, the JSON file of every figure, the PNG chart.

Invariant: the table and the chart are drawn from the same summary that budgets are checked
against; the JSON holds that summary plus every repeat's raw load-generator output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _num(v: Any, fmt: str) -> str:
    return format(v, fmt) if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def table(summary: dict[str, dict[str, dict[str, Any]]], order: list[str]) -> str:
    head = (
        f"{'scenario':<12} {'server':<15} {'msg/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'p99.9 ms':>9} {'srv cpu':>7} {'µs/msg':>6} {'lg cpu':>6}  notes"
    )
    lines = [head, "-" * len(head)]
    for key in order:
        for server, fig in summary.get(key, {}).items():
            notes = []
            if key.startswith("idle"):
                notes.append(
                    f"{_num(fig.get('kb_per_conn'), '.1f')} kB/conn, "
                    f"{_num(fig.get('connect_rate'), ',.0f')} conn/s, "
                    f"RSS {_num(fig.get('server_rss_mb'), '.0f')} MB"
                )
            if key.startswith("rate"):
                notes.append("kept up" if fig.get("kept_up") else "DID NOT KEEP UP")
                notes.append(f"offered {_num(fig.get('offered_per_s'), ',.0f')}/s")
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
            if server == "null" and key.startswith("rate"):
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

    keys = [k for k in order if not k.startswith("idle") and summary.get(k)]
    if not keys:
        return "chart skipped: no throughput or latency figures"
    servers: list[str] = []
    for k in keys:
        for s in summary[k]:
            if s not in servers:
                servers.append(s)
    fig, (ax_t, ax_l) = plt.subplots(2, 1, figsize=(max(8, 1.6 * len(keys) * len(servers) / 2), 9))
    width = 0.8 / len(servers)
    for i, server in enumerate(servers):
        xs = [j + i * width for j in range(len(keys))]
        ys = [summary[k].get(server, {}).get("delivered_per_s") or 0 for k in keys]
        ax_t.bar(xs, ys, width, label=server)
        for pct, marker in (("p50_ms", "o"), ("p99_ms", "^"), ("p999_ms", "s")):
            ly = [summary[k].get(server, {}).get(pct) for k in keys]
            pts = [
                (x, y) for x, y in zip(xs, ly, strict=True) if isinstance(y, (int, float)) and y > 0
            ]
            if pts:
                ax_l.scatter(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    marker=marker,
                    color=f"C{i}",
                    label=f"{server} {pct[:-3]}",
                )
    for ax in (ax_t, ax_l):
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(keys))])
        ax.set_xticklabels(keys)
    ax_t.set_ylabel("delivered messages / s")
    ax_t.set_title("throughput (fan-out: deliveries/s)")
    ax_t.legend()
    ax_l.set_yscale("log")
    ax_l.set_ylabel("latency, ms (log)")
    ax_l.set_title("latency p50 / p99 / p99.9 (fan-out: to the last member)")
    ax_l.legend(fontsize=7, ncol=len(servers))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"chart: {path}"
