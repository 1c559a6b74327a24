"""Budgets: thresholds on figures of one run, most of them ratios against a baseline measured
in the same run (bench/budgets.toml).

Invariant: a budget passes only when every figure it names was measured; a missing figure is a
failure, never a pass. A budget whose scenario was not run at all is skipped.
"""

from __future__ import annotations

import operator
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BUDGETS_PATH = Path(__file__).resolve().parent / "budgets.toml"

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}


@dataclass(frozen=True)
class Budget:
    name: str
    figure: str
    op: str
    value: float
    ratio_of: str | None = None
    requires: str | None = None  # a flag figure that must be true (e.g. the server kept up)
    # the same figure of a server that does nothing else, measured in the same run: when it
    # misses the budget too, the verdict says so (the machine's floor); it still fails
    floor: str | None = None
    # an additive budget: figure op (plus_of + value), e.g. a p99 at most 2 ms above another's
    plus_of: str | None = None


@dataclass(frozen=True)
class Verdict:
    budget: Budget
    status: str  # "pass", "FAIL", "skipped"
    detail: str
    floor_value: float | None = None  # the budget's floor figure in this run, when measured

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.budget.name,
            "status": self.status,
            "detail": self.detail,
            "figure": self.budget.figure,
            "op": self.budget.op,
            "value": self.budget.value,
            "ratio_of": self.budget.ratio_of,
            "floor": self.budget.floor,
            "floor_value": self.floor_value,
            "plus_of": self.budget.plus_of,
        }


def load(path: Path = BUDGETS_PATH) -> list[Budget]:
    data = tomllib.loads(path.read_text())
    budgets = []
    for entry in data.get("budget", []):
        b = Budget(
            str(entry["name"]),
            str(entry["figure"]),
            str(entry["op"]),
            float(entry["value"]),
            entry.get("ratio_of"),
            entry.get("requires"),
            entry.get("floor"),
            entry.get("plus_of"),
        )
        if b.op not in _OPS:
            raise ValueError(f"budget {b.name!r}: unknown op {b.op!r}")
        if b.plus_of is not None and b.ratio_of is not None:
            raise ValueError(f"budget {b.name!r}: ratio_of and plus_of exclude each other")
        budgets.append(b)
    return budgets


def lookup(summary: dict[str, dict[str, dict[str, Any]]], path: str) -> Any:
    key, server, name = path.split("/")
    return summary.get(key, {}).get(server, {}).get(name)


def check(
    budgets: list[Budget], summary: dict[str, dict[str, dict[str, Any]]], scenarios_run: set[str]
) -> list[Verdict]:
    """Judge every budget against the summary figures (`summary[key][server][figure]`)."""
    verdicts = []
    for b in budgets:
        keys = {b.figure.split("/")[0]} | ({b.ratio_of.split("/")[0]} if b.ratio_of else set())
        keys |= {b.plus_of.split("/")[0]} if b.plus_of else set()
        if not keys <= scenarios_run:
            verdicts.append(
                Verdict(
                    b, "skipped", "scenario not run: " + ", ".join(sorted(keys - scenarios_run))
                )
            )
            continue
        lhs = lookup(summary, b.figure)
        if not isinstance(lhs, (int, float)):
            key, server, _ = b.figure.split("/")
            why = summary.get(key, {}).get(server, {}).get("note") or summary.get(key, {}).get(
                server, {}
            ).get("error")
            verdicts.append(
                Verdict(b, "FAIL", f"{b.figure} was not measured" + (f" ({why})" if why else ""))
            )
            continue
        if b.requires is not None and lookup(summary, b.requires) is not True:
            verdicts.append(
                _with_floor(b, False, f"{b.requires} is not true ({b.figure} = {lhs:.4g})", summary)
            )
            continue
        if b.plus_of is not None:
            verdicts.append(_additive(b, b.plus_of, float(lhs), summary))
            continue
        if b.ratio_of is None:
            ok = _OPS[b.op](lhs, b.value)
            verdicts.append(_with_floor(b, ok, f"{lhs:.4g} {b.op} {b.value:g}", summary))
            continue
        ref = lookup(summary, b.ratio_of)
        if not isinstance(ref, (int, float)) or ref <= 0:
            verdicts.append(Verdict(b, "FAIL", f"{b.ratio_of} was not measured"))
            continue
        ok = _OPS[b.op](lhs, b.value * ref)
        verdicts.append(
            Verdict(
                b,
                "pass" if ok else "FAIL",
                f"{lhs:.4g} / {ref:.4g} = {lhs / ref:.2f}x (needs {b.op} {b.value:g}x)",
            )
        )
    return verdicts


def _additive(
    b: Budget, plus_of: str, lhs: float, summary: dict[str, dict[str, dict[str, Any]]]
) -> Verdict:
    """figure op (plus_of + value); a plus_of that was not measured fails the budget."""
    ref = lookup(summary, plus_of)
    if not isinstance(ref, (int, float)):
        return Verdict(b, "FAIL", f"{plus_of} was not measured")
    ok = _OPS[b.op](lhs, ref + b.value)
    return Verdict(
        b,
        "pass" if ok else "FAIL",
        f"{lhs:.4g} vs {ref:.4g}: {lhs - ref:+.4g} (needs {b.op} {ref:.4g} + {b.value:g})",
    )


def _with_floor(
    b: Budget, ok: bool, detail: str, summary: dict[str, dict[str, dict[str, Any]]]
) -> Verdict:
    """The verdict of an absolute budget, with its floor figure when measured: a failure the
    floor shares is named as this machine's (it stays a failure: the budget is not lowered)."""
    floor = lookup(summary, b.floor) if b.floor else None
    if not isinstance(floor, (int, float)):
        return Verdict(b, "pass" if ok else "FAIL", detail)
    server = b.floor.split("/")[1] if b.floor else ""
    if ok:
        return Verdict(b, "pass", f"{detail} ({server} floor {floor:.4g})", float(floor))
    if not _OPS[b.op](floor, b.value):
        detail += (
            f"; the {server} floor misses it too ({floor:.4g} in this run): this machine cannot "
            "show the budget"
        )
    else:
        detail += f"; the {server} floor meets it ({floor:.4g})"
    detail += _cpu_beside_floor(b, server, summary)
    return Verdict(b, "FAIL", detail, float(floor))


def _cpu_beside_floor(
    b: Budget, floor_server: str, summary: dict[str, dict[str, dict[str, Any]]]
) -> str:
    """Where a latency budget failed: the server's CPU per message next to the floor's, in the
    same run (a server near its core's limit queues, and queueing is what a p99 shows)."""
    key, server, _ = b.figure.split("/")
    ours = lookup(summary, f"{key}/{server}/cpu_us_per_msg")
    theirs = lookup(summary, f"{key}/{floor_server}/cpu_us_per_msg")
    load = lookup(summary, f"{key}/{server}/server_cpu")
    if not all(isinstance(v, (int, float)) for v in (ours, theirs, load)):
        return ""
    return (
        f"; {server} used {ours:.1f} µs of CPU per message ({load:.0%} of its core), "
        f"the floor {theirs:.1f} µs"
    )
