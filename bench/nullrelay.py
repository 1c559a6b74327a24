"""`python -m bench.nullrelay`: the cheapest server the load generator can talk to.

It answers auth, `sent` receipts, 1:1 forwarding, group_create and group fan-out with no
validation and no store, written in C like the load generator. It is not a relay: it exists
to measure the load generator's own ceiling (`python -m bench --servers null`), so a figure
can be trusted not to be the generator's limit. Prints "listening on ws://HOST:PORT".
"""

from __future__ import annotations

import contextlib
import sys


def main() -> int:
    from bench._loadgen import NullRelay

    server = NullRelay()
    port = server.listen("127.0.0.1")
    print(f"listening on ws://127.0.0.1:{port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
