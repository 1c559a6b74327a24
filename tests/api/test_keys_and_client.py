"""API keys from a file (re-read when it changes, refused at startup when unreadable) and the
package's clients (relay.api.client), sync and Trio, against a real relay."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest
import trio
from api_support import KEY, base_url, start_api_relay, user

from relay.api.client import ApiError, AsyncRelayApi, RelayApi
from relay.api.keys import ApiKeys
from relay.config import RelayConfig
from relay.errors import ConfigError


def test_keys_from_a_file_are_re_read_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# the backend\nalpha\n\n  beta  \n")
    now = [0.0]
    keys = ApiKeys.from_config(RelayConfig(api_keys_file=str(path), api_keys="inline"))
    keys.clock = lambda: now[0]
    assert keys.check("alpha") and keys.check("beta") and keys.check("inline")
    assert not keys.check("# the backend") and not keys.check("") and not keys.check("alph")
    path.write_text("gamma\n")
    os.utime(path, ns=(10**18, 10**18))
    now[0] += 2.0
    assert keys.check("gamma") and not keys.check("alpha") and keys.check("inline")
    path.unlink()  # unreadable later: the keys last read stay
    now[0] += 2.0
    assert keys.check("gamma")


def test_a_key_file_that_cannot_be_read_or_holds_no_key_is_a_config_error(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match="api_keys_file"):
        ApiKeys.from_config(RelayConfig(api_keys_file=str(tmp_path / "missing")))
    empty = tmp_path / "empty"
    empty.write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match="without a single key"):
        ApiKeys.from_config(RelayConfig(api_keys_file=str(empty)))


async def test_the_trio_client(nursery: trio.Nursery) -> None:
    relay = await start_api_relay(nursery)
    async with user(relay, "bob") as bob, AsyncRelayApi(base_url(relay), KEY) as api:
        sent = await api.publish("ann", recipient_id="bob", text="from the backend")
        again = await api.publish("ann", recipient_id="bob", text="x", message_id=sent.id)
        assert again.seq == sent.seq
        got = await bob.expect("message", id=sent.id)
        assert (got["text"], got["seq"]) == ("from the backend", sent.seq)
        presence = await api.presence("bob")
        assert (presence.status, presence.devices) == ("online", 1)
        page = await api.conversation("bob", "ann", limit=10)
        assert [m["id"] for m in page.items] == [sent.id] and not page.has_more
        group = await api.put_group("team", ["ann", "bob"], name="Team")
        assert group["createdBy"] == "ann"
        await api.publish("ann", group_id="team", text="hi team")
        assert [m["text"] for m in (await api.group_messages("team")).items] == ["hi team"]
        assert await api.disconnect("bob", "bye") == 1
        with pytest.raises(ApiError) as caught:
            await api.publish("ann", recipient_id="bob", text="")
        assert (caught.value.status, caught.value.code, caught.value.field) == (
            400, "invalid", "text")  # fmt: skip
    async with AsyncRelayApi(base_url(relay), "wrong") as api:
        with pytest.raises(ApiError) as caught:
            await api.presence("bob")
        assert caught.value.status == 401


async def test_the_blocking_client(nursery: trio.Nursery) -> None:
    relay = await start_api_relay(nursery)
    url = base_url(relay)

    def backend() -> tuple[int, int, str]:
        with RelayApi(url, KEY) as api:
            first = api.publish("ann", recipient_id="bob", text="one", message_id="k1")
            again = api.publish("ann", recipient_id="bob", text="one", message_id="k1")
            group = api.put_group("g", ["bob", "ann"])
            return first.seq, again.seq, group["createdBy"]

    assert await trio.to_thread.run_sync(backend) == (1, 1, "bob")


async def test_the_api_over_tls_on_the_wss_port(
    nursery: trio.Nursery, certificate: tuple[str, str]
) -> None:
    cert, key = certificate
    relay = await start_api_relay(nursery, certfile=cert, keyfile=key)
    assert relay.address is not None
    url = f"https://127.0.0.1:{relay.address.port}"
    context = ssl.create_default_context(cafile=cert)
    async with AsyncRelayApi(url, KEY, verify=context) as api:
        sent = await api.publish("ann", recipient_id="bob", text="over TLS")
        again = await api.publish("ann", recipient_id="bob", text="x", message_id=sent.id)
        assert again.seq == sent.seq == 1  # idempotent over TLS too
        assert (await api.presence("bob")).status == "offline"
