"""Authentication of the `auth` frame: pluggable, so token validation can be added later.

An Authenticator returns the user id the connection acts as, or raises
FrameError("auth_failed", ...) (the core then sends the error and closes with 1008).
"""

from __future__ import annotations

from typing import Protocol

from relay.protocol import AuthFrame


class Authenticator(Protocol):
    async def authenticate(self, frame: AuthFrame) -> str:
        """The user id for this auth frame, or raise FrameError with code `auth_failed`."""
        ...


class TrustingAuthenticator:
    """The default: trusts the frame's `userId` (no token check). For development and closed
    networks only; a deployment that needs identities plugs in a token-checking Authenticator."""

    async def authenticate(self, frame: AuthFrame) -> str:
        return frame.user_id
