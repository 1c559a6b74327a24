"""Health of what a node depends on: the optional ability of a store or broker to say why it
cannot be used right now (PostgreSQL or Redis lost), checked with isinstance.

While any part reports a problem, /healthz answers 503 with it and new messages are refused
with a `failed` receipt naming it; the part recovers by itself and reports None again.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class HealthReporting(Protocol):
    def problem(self) -> str | None:
        """Why this part cannot be used now, None while it can."""
        ...
