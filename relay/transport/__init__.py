"""The Trio shell: sockets, the WebSocket protocol and plain HTTP around the messaging core.

    server.py      Server: accept, opening handshake, flusher, ticker, expirer, drain
    handshake.py   the opening HTTP request (h11) and the WebSocket upgrade (wsproto)
    http.py        the plain-HTTP answers: /healthz, /metrics, the web chat, errors  (sans-IO)
    websocket.py   WebSocket: close handshake, parser, outbox, heartbeat            (sans-IO)
    connection.py  the WebSocket driven over ws:// (RawConnection) or wss:// (TlsConnection)
    poller.py      the epolls and the one task that read every ws:// connection
                   (signed-in sessions before newcomers)
    turns.py       the line for joining work: handshakes and sign-ins, 32 at a time

The core sees a connection only through relay.ports.Connection. This package module imports
nothing, so that importing the sans-IO modules does not import trio.
"""
