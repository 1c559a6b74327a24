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


@dataclass(frozen=True)
class Verdict:
    budget: Budget
    status: str  # "pass", "FAIL", "skipped"
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.budget.name,
            "status": self.status,
            "detail": self.detail,
            "figure": self.budget.figure,
            "op": self.budget.op,
            "value": self.budget.value,
            "ratio_of": self.budget.ratio_of,
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
        )
        if b.op not in _OPS:
            raise ValueError(f"budget {b.name!r}: unknown op {b.op!r}")
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
                Verdict(b, "FAIL", f"{b.requires} is not true ({b.figure} = {lhs:.4g})")
            )
            continue
        if b.ratio_of is None:
            ok = _OPS[b.op](lhs, b.value)
            verdicts.append(Verdict(b, "pass" if ok else "FAIL", f"{lhs:.4g} {b.op} {b.value:g}"))
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
