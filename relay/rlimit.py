"""The process's descriptor limit: one per connection, so `relay serve` raises it.

Invariant: only the soft limit is raised, up to the hard limit (what an unprivileged
process may do); when even the hard limit leaves fewer descriptors than `max_connections`
needs, the operator is told in one line what to raise, instead of the relay failing
accepts later with EMFILE.
"""

from __future__ import annotations

import resource

#: Descriptors the relay uses besides its connections: listeners, epoll instances, the
#: store's files and threads' pipes, log files, with room to spare.
RESERVED = 64


def raise_descriptor_limit(max_connections: int) -> str | None:
    """Raise the soft RLIMIT_NOFILE to the hard one. Returns a one-line warning when the
    hard limit is below what `max_connections` connections need, else None."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = hard == resource.RLIM_INFINITY
    target = max(soft, max_connections + RESERVED) if unlimited else hard
    if soft != resource.RLIM_INFINITY and target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    need = max_connections + RESERVED
    if soft != resource.RLIM_INFINITY and soft < need:
        return (
            f"the descriptor limit ({soft:,}, the hard limit) allows about "
            f"{max(soft - RESERVED, 0):,} connections, fewer than max_connections "
            f"({max_connections:,}); raise it to {need:,} (LimitNOFILE= in the systemd unit, "
            f"or `ulimit -Hn {need}` as root) or lower --max-connections"
        )
    return None
