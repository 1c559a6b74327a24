"""systemd's service notification protocol (sd_notify(3)), with the standard library only.

`relay serve` under a `Type=notify` unit tells systemd `READY=1` once it listens (so units
ordered after it start only when the port answers) and `STOPPING=1` when it starts draining.

Invariants:
- Without NOTIFY_SOCKET (not under systemd, or a unit of another type) every call does nothing.
- NOTIFY_SOCKET names an AF_UNIX datagram socket: a path, or `@name` for the Linux abstract
  namespace (the `@` becomes a leading NUL byte). Anything else is ignored, as sd_notify does.
- One state is one datagram, `KEY=VALUE` lines joined by newlines.
- Notification never stops the relay: a socket that cannot be reached (systemd gone, a test's
  socket closed) is logged at debug level and otherwise ignored, as sd_notify returns an error
  its callers do not act on either.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

__all__ = ["notify", "notify_address"]

log = logging.getLogger("relay.notify")


def notify_address(environ: Mapping[str, str] | None = None) -> str | bytes | None:
    """The address NOTIFY_SOCKET names, in the form socket.sendto takes; None when unset or
    not an AF_UNIX name (e.g. systemd's `vsock:` addresses, which this module does not speak)."""
    value = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def notify(*states: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send `states` (e.g. "READY=1", "STATUS=listening") as one datagram to NOTIFY_SOCKET.
    True when sent; False when there is nowhere to send or the send failed."""
    address = notify_address(environ)
    if address is None or not states:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(states).encode(), address)
    except OSError as exc:
        log.debug("cannot notify the service manager at %r: %s", address, exc)
        return False
    return True
