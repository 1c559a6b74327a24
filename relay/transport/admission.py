"""Per-address caps on new connections, sans-IO: open TCP connections per peer address, and a
token bucket of handshakes per address (`max_connections_per_address`,
`handshake_rate_per_address`; loopback peers are exempt unless `limit_loopback`).

Invariants: an admitted connection is counted until `release`; an address is remembered only
while it has an open connection or a bucket not yet full again (`prune`, a bounded slice of the
table per call: relay.rounds), so the table is bounded by the addresses recently seen, not by
every address ever seen.
"""

from __future__ import annotations

import ipaddress

from attrs import define, field

from relay.rounds import Rounds

#: A peer address may open this many seconds' worth of handshake_rate_per_address at once.
HANDSHAKE_BURST_SECONDS = 10.0


def is_loopback_peer(address: str) -> bool:
    """Whether a peer's IP address (as getpeername gives it) is this machine's loopback,
    IPv4-mapped IPv6 included."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


@define
class AddressUse:
    """One peer address's share of the per-address caps: its open TCP connections, and its
    token bucket of handshakes (`tokens` as of `stamp`)."""

    open: int
    tokens: float
    stamp: float


@define
class Admission:
    """The per-address caps of one server; times are the caller's clock (trio's)."""

    max_per_address: int
    rate: float  # handshakes per second per address
    #: the addresses with open connections or a bucket not yet full
    addresses: dict[str, AddressUse] = field(factory=dict)
    _rounds: Rounds[str] = field(factory=Rounds, init=False)

    @property
    def capacity(self) -> float:
        return self.rate * HANDSHAKE_BURST_SECONDS

    def admit(self, address: str, now: float) -> str | None:
        """Take one connection from `address` under its caps: None when admitted (the caller
        calls `release` when it ends), else why it is refused."""
        capacity = self.capacity
        use = self.addresses.get(address)
        if use is None:
            use = self.addresses[address] = AddressUse(open=0, tokens=capacity, stamp=now)
        else:
            use.tokens = min(capacity, use.tokens + (now - use.stamp) * self.rate)
            use.stamp = now
        if use.open >= self.max_per_address:
            return f"too many connections from this address (at most {use.open})"
        if use.tokens < 1.0:
            return f"too many new connections from this address (at most {self.rate:g} per second)"
        use.tokens -= 1.0
        use.open += 1
        return None

    def release(self, address: str) -> None:
        self.addresses[address].open -= 1

    def prune(self, now: float) -> None:
        """Forget the addresses with no connection whose bucket has refilled, among the next
        slice of a pass over the table."""
        rate, capacity = self.rate, self.capacity
        addresses = self.addresses
        for address in self._rounds.next(addresses):
            use = addresses.get(address)
            if (
                use is not None
                and not use.open
                and use.tokens + (now - use.stamp) * rate >= capacity
            ):
                del addresses[address]
