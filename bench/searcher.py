"""`python -m bench.searcher`: the search scenario's client, a process of its own.

Reads one JSON config line on stdin (port, users, queries, concurrency, limit), opens one
authenticated connection per concurrent searcher, prints `ready`, then each connection sends
`search` frames in a closed loop (the next when the previous `search_result` arrived), cycling
through the queries. A second stdin line {"from": t0, "to": t1} (time.monotonic) stops it; it
prints one JSON line: the searches that completed within [t0, t1], per second, and their
latency percentiles from the sorted samples (every sample kept: a few thousand a second).
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url


def percentile(sorted_ms: list[float], q: float) -> float | None:
    if not sorted_ms:
        return None
    return round(sorted_ms[min(len(sorted_ms) - 1, math.ceil(q * len(sorted_ms)) - 1)], 3)


async def searcher(
    ws: WebSocketConnection,
    queries: list[str],
    offset: int,
    limit: int,
    samples: list[tuple[float, float, int, int]],
    errors: list[str],
) -> None:
    n = offset
    while True:
        ref = f"q{n}"
        frame = {"type": "search", "query": queries[n % len(queries)], "limit": limit, "ref": ref}
        start = time.monotonic()
        try:
            await ws.send_message(json.dumps(frame))
            while True:
                answer = json.loads(await ws.get_message())
                if answer.get("ref") == ref:
                    break
        except ConnectionClosed as exc:
            # the relay closed the connection: every later search of it is lost, say so
            errors.append(f"connection closed: {exc.reason}")
            return
        end = time.monotonic()
        if answer.get("type") != "search_result":
            errors.append(json.dumps(answer)[:200])
        samples.append((end, end - start, len(answer.get("items", ())), n % len(queries)))
        n += 1


async def main() -> None:
    cfg: dict[str, Any] = json.loads(await trio.to_thread.run_sync(sys.stdin.readline))
    url = f"ws://127.0.0.1:{cfg['port']}/"
    samples: list[tuple[float, float, int, int]] = []
    errors: list[str] = []
    edges: dict[str, float] = {}
    async with trio.open_nursery() as nursery:
        conns: list[WebSocketConnection] = []
        for k in range(cfg["concurrency"]):
            user = cfg["users"][k % len(cfg["users"])]
            ws = await nursery.start(_open, url, user, f"searcher{k}")
            conns.append(ws)
        print("ready", flush=True)
        for k, ws in enumerate(conns):
            nursery.start_soon(searcher, ws, cfg["queries"], k * 7, cfg["limit"], samples, errors)
        edges = json.loads(await trio.to_thread.run_sync(sys.stdin.readline))
        stopped = len(errors)  # a connection closing from here on is this process stopping
        nursery.cancel_scope.cancel()
    del errors[stopped:]
    t0, t1 = edges["from"], edges["to"]
    window = [s for s in samples if t0 <= s[0] <= t1]
    ms = sorted(s[1] * 1000 for s in window)
    print(
        json.dumps(
            {
                "searches": len(window),
                "searches_per_s": len(window) / (t1 - t0) if t1 > t0 else 0.0,
                "p50_ms": percentile(ms, 0.50),
                "p99_ms": percentile(ms, 0.99),
                "max_ms": round(ms[-1], 3) if ms else None,
                "empty_results": sum(1 for s in window if s[2] == 0),
                "errors": len(errors),
                "first_error": errors[0] if errors else None,
                "total_searches": len(samples),
                # which queries cost what: the median of each, slowest first
                "by_query_p50_ms": dict(
                    sorted(
                        (
                            (q, percentile(sorted(s[1] * 1000 for s in window if s[3] == k), 0.5))
                            for k, q in enumerate(cfg["queries"])
                            if any(s[3] == k for s in window)
                        ),
                        key=lambda item: -(item[1] or 0.0),
                    )
                ),
            }
        ),
        flush=True,
    )


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
