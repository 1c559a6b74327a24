"""The search client's open-loop figures (bench/searcher.py): latency from each search's due
time, and a search never answered counted, not dropped (no coordinated omission)."""

from __future__ import annotations

from bench.searcher import Answer, Tally, due_query, open_figures

CFG = {"rate": 100.0, "queries": ["a", "b", "c", "d"], "users": ["u0", "u1"]}
START = 1000.0  # time.monotonic when the schedule began: search k is due at START + k / 100


def answered(k: int, latency: float, sent_late: float = 0.0, items: int = 1) -> Answer:
    due = START + k / 100
    return Answer(k, due, due + sent_late, due + latency, items, k % 4)


def test_latency_counts_from_the_due_time_not_the_send_time() -> None:
    # searches 0..199 due over 2 s, the window the second: each sent 30 ms late and answered
    # 40 ms after it was due
    tally = Tally(answers=[answered(k, 0.040, sent_late=0.030) for k in range(200)])
    fig = open_figures(CFG, tally, START, START + 1.0, START + 1.995, START + 4.0)
    assert fig["due"] == 100 and fig["unanswered"] == 0 and fig["searches"] == 100
    assert fig["p50_ms"] == fig["p99_ms"] == 40.0  # not the 10 ms after each send
    assert fig["send_lag_p99_ms"] == 30.0
    assert fig["kept_up"] is True


def test_a_search_never_answered_counts_with_its_wait_until_the_stop() -> None:
    # two searches in a hundred unanswered when the client stopped 2 s after the window
    answers = [answered(k, 0.005) for k in range(100) if k not in (50, 70)]
    fig = open_figures(CFG, Tally(answers=answers), START, START, START + 0.995, START + 2.995)
    assert fig["due"] == 100 and fig["unanswered"] == 2
    assert fig["max_ms"] == 2495.0  # due at 0.5 s, stopped at 2.995 s
    assert fig["p99_ms"] == 2295.0  # the 99th of 100 samples: the other one, due at 0.7 s
    assert fig["kept_up"] is False


def test_a_relay_answering_at_half_the_rate_did_not_keep_up() -> None:
    # each answer 10 ms later than the one before: queueing grows over the window
    answers = [answered(k, 0.005 + 0.010 * k) for k in range(100)]
    fig = open_figures(CFG, Tally(answers=answers), START, START, START + 0.995, START + 3.0)
    assert fig["unanswered"] == 0
    assert fig["searches"] < 0.98 * 100 and fig["kept_up"] is False
    assert fig["p99_ms"] is not None and fig["p99_ms"] > 900


def test_only_searches_due_inside_the_window_are_judged() -> None:
    # due before the window (warm-up) and after it (drain) are left out, however slow
    answers = [answered(k, 5.0 if k < 10 or k > 59 else 0.002) for k in range(80)]
    fig = open_figures(CFG, Tally(answers=answers), START, START + 0.1, START + 0.595, START + 9)
    assert fig["due"] == 50 and fig["p99_ms"] == 2.0


def test_every_user_asks_every_query() -> None:
    pairs = {due_query(k, 2, 4) for k in range(64)}
    assert pairs == {(c, q) for c in range(2) for q in range(4)}
