"""Budget judging for `python -m bench`: ratios against same-run baselines, missing = failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import budgets


def _summary(**figs: float) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for path, value in figs.items():
        key, server, name = path.split("__")
        out.setdefault(key, {}).setdefault(server, {})[name] = value
    return out


RATIO = budgets.Budget(
    "pairwise 3x", "pairwise/relay/delivered_per_s", ">=", 3.0, "pairwise/node-ws/delivered_per_s"
)
ABSOLUTE = budgets.Budget("p99", "rate@20000/relay/p99_ms", "<=", 1.0)


def test_ratio_budget_passes_and_fails_on_the_ratio() -> None:
    good = _summary(
        pairwise__relay__delivered_per_s=150_000, **{"pairwise__node-ws__delivered_per_s": 45_000}
    )
    bad = _summary(
        pairwise__relay__delivered_per_s=120_000, **{"pairwise__node-ws__delivered_per_s": 45_000}
    )
    assert budgets.check([RATIO], good, {"pairwise"})[0].status == "pass"
    verdict = budgets.check([RATIO], bad, {"pairwise"})[0]
    assert verdict.status == "FAIL"
    assert "2.67x" in verdict.detail


def test_absolute_budget() -> None:
    assert (
        budgets.check([ABSOLUTE], _summary(**{"rate@20000__relay__p99_ms": 0.8}), {"rate@20000"})[
            0
        ].status
        == "pass"
    )
    assert (
        budgets.check([ABSOLUTE], _summary(**{"rate@20000__relay__p99_ms": 1.2}), {"rate@20000"})[
            0
        ].status
        == "FAIL"
    )


def test_missing_figure_fails_and_unrun_scenario_is_skipped() -> None:
    only_relay = _summary(pairwise__relay__delivered_per_s=150_000)
    assert budgets.check([RATIO], only_relay, {"pairwise"})[0].status == "FAIL"
    assert budgets.check([RATIO], {}, {"pairwise"})[0].status == "FAIL"
    assert budgets.check([RATIO], {}, {"fanout"})[0].status == "skipped"


def test_shipped_budgets_are_the_issue_budgets() -> None:
    loaded = budgets.load()
    shipped = {b.figure: (b.op, b.value, b.ratio_of, b.requires) for b in loaded}
    # the latency budgets name the null server's figure of the same run as their floor
    assert {b.figure: b.floor for b in loaded if b.floor} == {
        "rate@20000/relay/p99_ms": "rate@20000/null/p99_ms",
        "rate@40000/relay/p99_ms": "rate@40000/null/p99_ms",
        "sparse@1000/relay/p99_ms": "sparse@1000/null/p99_ms",
        "sparse@10000/relay/p99_ms": "sparse@10000/null/p99_ms",
    }
    sparse = {
        f"sparse@{n}/relay/{fig}": (
            "<=",
            1.0,
            f"sparse@{n}/node-ws/{fig}",
            f"sparse@{n}/relay/kept_up",
        )
        for n in (1000, 10000)
        for fig in ("cpu_us_per_msg", "p99_ms")
    }
    assert shipped == {
        "pairwise/relay/delivered_per_s": (">=", 4.0, "pairwise/node-ws/delivered_per_s", None),
        "mix/relay/delivered_per_s": (">=", 1.4, "mix/node-ws/delivered_per_s", None),
        "fanout/relay/delivered_per_s": (">=", 3.0, "fanout/node-ws/delivered_per_s", None),
        "idle/relay/kb_per_conn": ("<=", 1.0, "idle/node-ws/kb_per_conn", None),
        "rate@20000/relay/p99_ms": ("<=", 1.0, None, "rate@20000/relay/kept_up"),
        "rate@40000/relay/p99_ms": ("<=", 2.0, None, "rate@40000/relay/kept_up"),
        "durable/relay-sqlite/delivered_per_s": (
            ">=",
            0.6,
            "durable/relay/delivered_per_s",
            None,
        ),
        **sparse,
        "conns@10000/relay/delivered_per_s": (
            ">=",
            0.8,
            "conns@100/relay/delivered_per_s",
            None,
        ),
        "c100k/relay/kb_per_conn": ("<=", 6.0, None, None),
        "storm@uniform/relay-sqlite/p99_ms": ("<=", 50.0, None, None),
        "search@searching/relay-sqlite/search_p99_ms": ("<=", 50.0, None, None),
        "search@searching/relay-sqlite/delivered_per_s": (
            ">=",
            0.8,
            "search@alone/relay-sqlite/delivered_per_s",
            None,
        ),
        "cluster@three-nodes/relay-cluster/p99_ms": (
            "<=",
            2.0,
            None,
            "cluster@three-nodes/relay-cluster/kept_up",
        ),
    }
    # the one additive budget: cross-node p99 at most 2 ms above one node's, same run
    assert {b.figure: b.plus_of for b in loaded if b.plus_of} == {
        "cluster@three-nodes/relay-cluster/p99_ms": "cluster@one-node/relay-postgres/p99_ms"
    }


def test_a_latency_budget_needs_the_server_to_have_kept_up() -> None:
    budget = budgets.Budget(
        "p99", "rate@20000/relay/p99_ms", "<=", 1.0, requires="rate@20000/relay/kept_up"
    )
    fast_but_behind = {"rate@20000": {"relay": {"p99_ms": 0.5, "kept_up": False}}}
    fast_and_steady = {"rate@20000": {"relay": {"p99_ms": 0.5, "kept_up": True}}}
    assert budgets.check([budget], fast_but_behind, {"rate@20000"})[0].status == "FAIL"
    assert budgets.check([budget], fast_and_steady, {"rate@20000"})[0].status == "pass"


FLOORED = budgets.Budget(
    "p99",
    "rate@20000/relay/p99_ms",
    "<=",
    1.0,
    requires="rate@20000/relay/kept_up",
    floor="rate@20000/null/p99_ms",
)


def _floored(relay_p99: float, null_p99: float | None, kept_up: bool = True) -> budgets.Verdict:
    summary: dict[str, dict[str, dict[str, object]]] = {
        "rate@20000": {"relay": {"p99_ms": relay_p99, "kept_up": kept_up}}
    }
    if null_p99 is not None:
        summary["rate@20000"]["null"] = {"p99_ms": null_p99}
    return budgets.check([FLOORED], summary, {"rate@20000"})[0]


def test_a_floor_that_misses_the_budget_is_named_but_never_turns_a_failure_into_a_pass() -> None:
    verdict = _floored(12.0, 9.5)
    assert verdict.status == "FAIL"
    assert "floor misses it too (9.5" in verdict.detail and verdict.floor_value == 9.5
    # not kept up: still a failure, the floor still shown
    behind = _floored(0.5, 3.0, kept_up=False)
    assert behind.status == "FAIL" and "floor misses it too" in behind.detail


def test_a_floor_that_meets_the_budget_puts_the_failure_on_the_server() -> None:
    verdict = _floored(12.0, 0.4)
    assert verdict.status == "FAIL" and "floor meets it (0.4)" in verdict.detail
    assert "cannot" not in verdict.detail


def test_a_latency_failure_shows_the_servers_cpu_per_message_beside_the_floors() -> None:
    summary: dict[str, dict[str, dict[str, object]]] = {
        "rate@20000": {
            "relay": {"p99_ms": 3.0, "kept_up": True, "cpu_us_per_msg": 43.5, "server_cpu": 0.87},
            "null": {"p99_ms": 0.6, "cpu_us_per_msg": 21.0, "server_cpu": 0.42},
        }
    }
    verdict = budgets.check([FLOORED], summary, {"rate@20000"})[0]
    assert verdict.status == "FAIL"
    assert "relay used 43.5 µs of CPU per message (87% of its core), the floor 21.0 µs" in (
        verdict.detail
    )
    # without the CPU figures (an older JSON, a run that delivered nothing) the verdict stands
    assert "µs" not in _floored(3.0, 0.6).detail


def test_a_pass_shows_its_floor_and_a_missing_floor_changes_nothing() -> None:
    passed = _floored(0.8, 0.3)
    assert passed.status == "pass" and "null floor 0.3" in passed.detail
    assert passed.as_dict()["floor_value"] == 0.3
    unfloored = _floored(0.8, None)
    assert unfloored.status == "pass" and "floor" not in unfloored.detail
    assert _floored(1.5, None).status == "FAIL"


ADDITIVE = budgets.Budget(
    "cross-node p99 <= one-node p99 + 2 ms",
    "cluster@three-nodes/relay-cluster/p99_ms",
    "<=",
    2.0,
    requires="cluster@three-nodes/relay-cluster/kept_up",
    plus_of="cluster@one-node/relay-postgres/p99_ms",
)
CLUSTER_KEYS = {"cluster@three-nodes", "cluster@one-node"}


def _cluster(three: float | None, one: float | None, kept_up: bool = True) -> budgets.Verdict:
    summary: dict[str, dict[str, dict[str, object]]] = {
        "cluster@three-nodes": {"relay-cluster": {"kept_up": kept_up}},
        "cluster@one-node": {"relay-postgres": {}},
    }
    if three is not None:
        summary["cluster@three-nodes"]["relay-cluster"]["p99_ms"] = three
    if one is not None:
        summary["cluster@one-node"]["relay-postgres"]["p99_ms"] = one
    return budgets.check([ADDITIVE], summary, CLUSTER_KEYS)[0]


def test_an_additive_budget_adds_its_value_to_the_other_figure() -> None:
    passed = _cluster(4.9, 3.0)
    assert passed.status == "pass" and "+1.9" in passed.detail
    assert _cluster(5.0, 3.0).status == "pass"  # exactly 2 ms above: within the budget
    failed = _cluster(5.2, 3.0)
    assert failed.status == "FAIL" and "+2.2" in failed.detail and "3 + 2" in failed.detail
    assert failed.as_dict()["plus_of"] == "cluster@one-node/relay-postgres/p99_ms"


def test_an_additive_budget_fails_when_either_figure_is_missing_or_not_kept_up() -> None:
    assert _cluster(None, 3.0).status == "FAIL"
    missing_ref = _cluster(1.0, None)
    assert missing_ref.status == "FAIL" and "was not measured" in missing_ref.detail
    assert _cluster(1.0, 3.0, kept_up=False).status == "FAIL"
    # skipped only when a scenario it names was not run
    assert budgets.check([ADDITIVE], {}, {"cluster@three-nodes"})[0].status == "skipped"


def test_an_additive_budget_cannot_also_be_a_ratio(tmp_path: Path) -> None:
    path = tmp_path / "budgets.toml"
    path.write_text(
        '[[budget]]\nname = "both"\nfigure = "a/b/c"\nop = "<="\nvalue = 2.0\n'
        'ratio_of = "d/e/f"\nplus_of = "g/h/i"\n'
    )
    with pytest.raises(ValueError, match="exclude each other"):
        budgets.load(path)
