"""The bench's deflate scenario: its client against a real relay, and its figures."""

from __future__ import annotations

import os
from typing import Any

import trio
from support import start_relay

from bench import deflate, scenarios, servers


class _Args:
    quick = True


def _config(relay: Any) -> dict[str, Any]:
    address = relay.address
    assert address is not None
    return {
        "port": address.port,
        "server_pid": os.getpid(),  # the relay runs in this process
        "text_bytes": 100,
        "messages": 50,
        "warmup": 0.0,
        "duration": 0.3,
        "user_prefix": "t",
    }


async def test_the_client_reads_compressed_pages_only_from_a_compressing_relay(
    nursery: trio.Nursery,
) -> None:
    on = await start_relay(nursery)
    off = await start_relay(nursery, compression=False)
    with trio.fail_after(30):
        got_on = await trio.to_thread.run_sync(deflate.run, _config(on))
        got_off = await trio.to_thread.run_sync(deflate.run, _config(off))
    for got in (got_on, got_off):
        assert got["pages"] > 0 and got["page_json_bytes"] > 10_000
    assert got_on["compressed"] and not got_off["compressed"]
    assert got_on["extensions"].startswith("permessage-deflate; server_no_context_takeover")
    assert got_off["extensions"] is None
    # per page, the compressed wire is a fraction of the page; the plain wire is all of it
    assert got_on["wire_bytes"] / got_on["pages"] < got_on["page_json_bytes"] / 5
    assert got_off["wire_bytes"] / got_off["pages"] > got_off["page_json_bytes"]


def test_the_figures_are_per_page() -> None:
    run = scenarios.plan(["deflate"], scenarios.settings(_Args()))[0]
    assert run.servers == ("relay", "relay-no-compression")
    raw = {
        "before": {"t": 1.0, "loadgen_cpu_s": 0.0, "server_cpu_s": 1.0},
        "after": {"t": 3.0, "loadgen_cpu_s": 1.0, "server_cpu_s": 1.5},
        "pages": 1000,
        "wire_bytes": 700_000,
        "page_json_bytes": 14_800,
        "compressed": True,
    }
    fig, problems = scenarios.figures(run, raw)
    assert problems == []
    assert fig["wire_bytes_per_page"] == 700 and fig["pages_per_s"] == 500
    assert abs(fig["cpu_us_per_page"] - 500) < 1e-6
    assert "--no-compression" in servers.relay_no_compression_spec().argv
