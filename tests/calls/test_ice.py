"""`auth_ok` `iceServers` (contract v2, "Session additions"): STUN as configured, TURN with
coturn use-auth-secret credentials that a TURN server holding the same secret accepts until
their expiry; the settings' checks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

import pytest
import trio
from support import start_relay

from relay.config import RelayConfig
from relay.errors import ConfigError

SECRET = "coturn-static-auth-secret"


async def test_auth_ok_carries_no_ice_servers_when_none_are_configured(
    nursery: trio.Nursery, raw: Any
) -> None:
    relay = await start_relay(nursery)
    async with raw(relay.url, "alice") as alice:
        assert alice.auth_ok["iceServers"] == []


async def test_auth_ok_carries_stun_and_time_limited_turn_credentials(
    nursery: trio.Nursery, raw: Any, client: Any
) -> None:
    relay = await start_relay(
        nursery,
        stun_urls="stun:stun.example.com:3478, stun:stun2.example.com",
        turn_urls="turn:turn.example.com:3478?transport=udp,turns:turn.example.com:5349",
        turn_secret=SECRET,
        turn_credential_ttl=600.0,
    )
    before = time.time()
    async with raw(relay.url, "alice") as alice:
        stun, turn = alice.auth_ok["iceServers"]
    after = time.time()
    assert stun == {"urls": ["stun:stun.example.com:3478", "stun:stun2.example.com"]}
    assert turn["urls"] == [
        "turn:turn.example.com:3478?transport=udp",
        "turns:turn.example.com:5349",
    ]
    expiry, user = turn["username"].split(":")
    assert user == "alice"
    assert int(before + 600) <= int(expiry) <= int(after + 600)
    # what coturn computes with use-auth-secret / static-auth-secret
    expected = hmac.new(SECRET.encode(), turn["username"].encode(), hashlib.sha1).digest()
    assert base64.b64decode(turn["credential"]) == expected
    assert base64.b64encode(expected).decode() == turn["credential"]
    # the client library keeps them for its RTCPeerConnection
    async with client(relay, "bob") as bob:
        assert bob.ice_servers[1]["username"].endswith(":bob")
    # the secret never shows in the config's repr (logs)
    assert relay.config is not None and SECRET not in repr(relay.config)


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"turn_urls": "turn:t.example.com"}, "turn_urls needs turn_secret"),
        ({"stun_urls": "http://stun.example.com"}, "must start with stun: or stuns:"),
        ({"turn_urls": "stun:t.example.com", "turn_secret": "s"}, "must start with turn:"),
        ({"turn_secret": ""}, "turn_secret is set but empty"),
        ({"call_ring_timeout": 0.0}, "call_ring_timeout must be > 0"),
        ({"turn_credential_ttl": -1.0}, "turn_credential_ttl must be > 0"),
    ],
)
def test_ice_settings_are_checked(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RelayConfig(**settings)


def test_the_cli_reads_the_call_settings_from_the_environment() -> None:
    from relay.cli import build_parser, config_from

    args = build_parser().parse_args(["serve", "--call-ring-timeout", "45"])
    config = config_from(
        args,
        {"RELAY_TURN_URLS": "turn:t.example.com", "RELAY_TURN_SECRET": SECRET},
    )
    assert config.call_ring_timeout == 45.0
    assert config.turn_url_list == ("turn:t.example.com",)
    assert config.turn_secret == SECRET
