"""`python -m bench.searcher`: the search scenario's client, a process of its own.

Reads one JSON config line on stdin (port, users, queries, limit, and the loop: `"mode":
"open"` with `rate` searches/s, or `"mode": "closed"` with `concurrency`), opens its
authenticated connections, prints `ready`, then searches, cycling through the queries:

- open loop (search@searching): search k is due at start + k / rate, sent on connection
  k mod n (one connection per searching user), whether or not earlier ones were answered.
  Latency is the answer's arrival minus the search's DUE time, not its send time: a client
  that fell behind, or a relay that queued searches, shows in the figure instead of slowing
  the schedule down (no coordinated omission).
- closed loop (search@capacity): `concurrency` connections, each sending its next search when
  the previous answer arrived: what the relay answers flat out.

A second stdin line {"from": t0, "to": t1} (time.monotonic, the load generator's window) stops
it; it prints one JSON line of figures. Every sample is kept and sorted (hundreds to a few
thousand a second).
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any

import trio
from attrs import define, field
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url


def percentile(sorted_ms: list[float], q: float) -> float | None:
    if not sorted_ms:
        return None
    return round(sorted_ms[min(len(sorted_ms) - 1, math.ceil(q * len(sorted_ms)) - 1)], 3)


@define
class Answer:
    k: int  # the search's number: its place in the open loop's schedule
    due: float  # time.monotonic the search was due (open loop) or sent (closed loop)
    sent: float
    done: float
    items: int
    query: int  # index into the queries


@define
class Tally:
    answers: list[Answer] = field(factory=list)
    errors: list[str] = field(factory=list)
    # open loop: ref -> (k, due, sent, query) of the searches sent and not answered yet
    pending: dict[str, tuple[int, float, float, int]] = field(factory=dict)


async def closed_searcher(
    ws: WebSocketConnection, queries: list[str], offset: int, limit: int, tally: Tally
) -> None:
    n = offset
    while True:
        ref = f"q{n}"
        q = n % len(queries)
        frame = {"type": "search", "query": queries[q], "limit": limit, "ref": ref}
        start = time.monotonic()
        try:
            await ws.send_message(json.dumps(frame))
            while True:
                answer = json.loads(await ws.get_message())
                if answer.get("ref") == ref:
                    break
        except ConnectionClosed as exc:
            # the relay closed the connection: every later search of it is lost, say so
            tally.errors.append(f"connection closed: {exc.reason}")
            return
        end = time.monotonic()
        if answer.get("type") != "search_result":
            tally.errors.append(json.dumps(answer)[:200])
        tally.answers.append(Answer(n, start, start, end, len(answer.get("items", ())), q))
        n += 1


def due_query(k: int, n_conns: int, n_queries: int) -> tuple[int, int]:
    """Search k's connection and query: round robin over the connections, and each
    connection's turn shifted by one query per round so every user asks every query."""
    return k % n_conns, (k + k // n_queries) % n_queries


async def open_sender(
    ws: WebSocketConnection,
    conn: int,
    n_conns: int,
    queries: list[str],
    limit: int,
    start: float,
    rate: float,
    tally: Tally,
) -> None:
    """Send connection `conn`'s share of the schedule, each search at its due time."""
    k = conn
    while True:
        due = start + k / rate
        # due times are time.monotonic (the load generator's window clock), not trio's clock
        await trio.sleep(max(0.0, due - time.monotonic()))
        _, q = due_query(k, n_conns, len(queries))
        ref = f"s{k}"
        tally.pending[ref] = (k, due, time.monotonic(), q)
        frame = {"type": "search", "query": queries[q], "limit": limit, "ref": ref}
        try:
            await ws.send_message(json.dumps(frame))
        except ConnectionClosed as exc:
            tally.errors.append(f"connection closed: {exc.reason}")
            return
        k += n_conns


async def open_receiver(ws: WebSocketConnection, tally: Tally) -> None:
    """Match each answer to its pending search by `ref`; other frames are not searches'."""
    while True:
        try:
            answer = json.loads(await ws.get_message())
        except ConnectionClosed as exc:
            tally.errors.append(f"connection closed: {exc.reason}")
            return
        done = time.monotonic()
        ref = answer.get("ref")
        if not isinstance(ref, str) or ref not in tally.pending:
            continue
        k, due, sent, q = tally.pending.pop(ref)
        if answer.get("type") != "search_result":
            tally.errors.append(json.dumps(answer)[:200])
        tally.answers.append(Answer(k, due, sent, done, len(answer.get("items", ())), q))


def open_figures(
    cfg: dict[str, Any], tally: Tally, start: float, t0: float, t1: float, stop: float
) -> dict[str, Any]:
    """The open loop's figures over the searches DUE within [t0, t1]: each one answered by
    `stop` (the window plus the load generator's drain) gives its latency from its due time;
    one not answered by then (or never sent) counts with `stop` minus its due time, a lower
    bound, so a search the relay never answered can only raise the percentiles."""
    rate = float(cfg["rate"])
    # the due searches are k in [first, last] (a nanosecond's slack for rounding: a search due
    # exactly at an edge is in the window)
    first = max(0, math.ceil((t0 - start) * rate - 1e-9))
    last = math.floor((t1 - start) * rate + 1e-9)
    due_n = max(0, last - first + 1)
    answered = {a.k: a for a in tally.answers if first <= a.k <= last}
    ms: list[float] = []
    lag: list[float] = []
    for a in answered.values():
        ms.append((a.done - a.due) * 1000)
        lag.append((a.sent - a.due) * 1000)
    unanswered = due_n - len(answered)
    ms += [(stop - (start + k / rate)) * 1000 for k in range(first, last + 1) if k not in answered]
    ms.sort()
    lag.sort()
    window = t1 - t0
    in_window = [a for a in tally.answers if t0 <= a.done <= t1]
    per_s = len(in_window) / window if window > 0 else 0.0
    return {
        "mode": "open",
        "rate": rate,
        "due": due_n,
        "searches": len(in_window),
        "searches_per_s": per_s,
        "unanswered": unanswered,
        # kept up: every search due in the window answered before the stop, and answers
        # arriving in the window at the offered rate (2% for the searches in flight at its
        # edges: ~50 ms of searches of a 5-10 s window)
        "kept_up": unanswered == 0 and per_s >= 0.98 * rate,
        "p50_ms": percentile(ms, 0.50),
        "p99_ms": percentile(ms, 0.99),
        "max_ms": round(ms[-1], 3) if ms else None,
        # how late the client itself sent (its own core's share of the latency)
        "send_lag_p99_ms": percentile(lag, 0.99),
        "empty_results": sum(1 for a in answered.values() if a.items == 0),
        "by_query_p50_ms": _by_query(cfg["queries"], list(answered.values())),
    }


def closed_figures(cfg: dict[str, Any], tally: Tally, t0: float, t1: float) -> dict[str, Any]:
    """The closed loop's figures over the searches that completed within [t0, t1]."""
    window = [a for a in tally.answers if t0 <= a.done <= t1]
    ms = sorted((a.done - a.sent) * 1000 for a in window)
    return {
        "mode": "closed",
        "concurrency": cfg["concurrency"],
        "searches": len(window),
        "searches_per_s": len(window) / (t1 - t0) if t1 > t0 else 0.0,
        "p50_ms": percentile(ms, 0.50),
        "p99_ms": percentile(ms, 0.99),
        "max_ms": round(ms[-1], 3) if ms else None,
        "empty_results": sum(1 for a in window if a.items == 0),
        "by_query_p50_ms": _by_query(cfg["queries"], window),
    }


def _by_query(queries: list[str], answers: list[Answer]) -> dict[str, float | None]:
    """Which queries cost what: the median latency of each, slowest first."""
    by: dict[int, list[float]] = {}
    for a in answers:
        by.setdefault(a.query, []).append((a.done - a.due) * 1000)
    medians = {queries[q]: percentile(sorted(v), 0.5) for q, v in by.items()}
    return dict(sorted(medians.items(), key=lambda item: -(item[1] or 0.0)))


async def main() -> None:
    cfg: dict[str, Any] = json.loads(await trio.to_thread.run_sync(sys.stdin.readline))
    url = f"ws://127.0.0.1:{cfg['port']}/"
    open_loop = cfg.get("mode", "closed") == "open"
    n_conns = len(cfg["users"]) if open_loop else int(cfg["concurrency"])
    queries: list[str] = cfg["queries"]
    tally = Tally()
    start = 0.0
    async with trio.open_nursery() as nursery:
        conns: list[WebSocketConnection] = []
        for k in range(n_conns):
            user = cfg["users"][k % len(cfg["users"])]
            ws = await nursery.start(_open, url, user, f"searcher{k}")
            conns.append(ws)
        print("ready", flush=True)
        start = time.monotonic()
        for k, ws in enumerate(conns):
            if open_loop:
                nursery.start_soon(open_receiver, ws, tally)
                nursery.start_soon(
                    open_sender, ws, k, n_conns, queries, cfg["limit"], start, cfg["rate"], tally
                )
            else:
                nursery.start_soon(closed_searcher, ws, queries, k * 7, cfg["limit"], tally)
        edges = json.loads(await trio.to_thread.run_sync(sys.stdin.readline))
        stop = time.monotonic()
        stopped = len(tally.errors)  # a connection closing from here on is this process stopping
        nursery.cancel_scope.cancel()
    del tally.errors[stopped:]
    t0, t1 = edges["from"], edges["to"]
    result = (
        open_figures(cfg, tally, start, t0, t1, stop)
        if open_loop
        else closed_figures(cfg, tally, t0, t1)
    )
    result.update(
        errors=len(tally.errors),
        first_error=tally.errors[0] if tally.errors else None,
        total_searches=len(tally.answers),
    )
    print(json.dumps(result), flush=True)


async def _open(
    url: str, user: str, device: str, task_status: trio.TaskStatus[WebSocketConnection]
) -> None:
    async with open_websocket_url(url, max_message_size=16 * 1024 * 1024) as ws:
        await ws.send_message(json.dumps({"type": "auth", "userId": user, "deviceId": device}))
        while True:
            frame = json.loads(await ws.get_message())
            if frame.get("type") == "auth_ok":
                break
        task_status.started(ws)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main)
