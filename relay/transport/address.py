"""Where a started relay listens: the value `Relay.serve` hands its caller."""

from __future__ import annotations

from attrs import frozen


@frozen
class BoundAddress:
    """Where a started relay listens; `url` is what a client connects to."""

    host: str
    port: int
    scheme: str = "ws"

    @property
    def url(self) -> str:
        host = self.host
        if host in ("", "0.0.0.0", "::"):
            host = "localhost"
        elif ":" in host:
            host = f"[{host}]"
        return f"{self.scheme}://{host}:{self.port}"
