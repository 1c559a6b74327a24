"""The call tests' fixtures: a real relay on loopback and clients of it (tests/live_clients.py)."""

from live_clients import client, raw, relay, unauthenticated

__all__ = ["client", "raw", "relay", "unauthenticated"]
