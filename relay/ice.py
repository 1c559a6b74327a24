"""The ICE servers a session is handed in `auth_ok` (`iceServers`), from configuration.

STUN entries are the configured URLs as they are. TURN entries carry a credential made the
way coturn checks it with `use-auth-secret` (the TURN REST API scheme): the username is
`<expiry>:<userId>` (expiry in Unix seconds, `turn_credential_ttl` from now) and the
credential is base64(HMAC-SHA1(turn_secret, username)). The TURN server needs only the same
secret; the relay keeps no state for it, and a credential stops working at its expiry.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from relay.config import RelayConfig


def turn_credential(secret: str, user_id: str, expiry: int) -> tuple[str, str]:
    """(username, credential) of coturn's use-auth-secret for `user_id` until `expiry`."""
    username = f"{expiry}:{user_id}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def ice_servers(config: RelayConfig, user_id: str, now: float) -> list[dict[str, Any]]:
    """The `iceServers` of `user_id`'s auth_ok at wall-clock time `now` ([] when none are
    configured), in the shape of WebRTC's RTCIceServer."""
    servers: list[dict[str, Any]] = []
    stun = config.stun_url_list
    if stun:
        servers.append({"urls": list(stun)})
    turn = config.turn_url_list
    if turn and config.turn_secret:
        expiry = int(now + config.turn_credential_ttl)
        username, credential = turn_credential(config.turn_secret, user_id, expiry)
        servers.append({"urls": list(turn), "username": username, "credential": credential})
    return servers
