"""Several relay nodes as one relay: one PostgreSQL (relay.store.postgres) and one Redis.

One concern per module:
- envelope.py: what nodes publish to each other, and the channel names (sans-IO);
- ordering.py: Orderer, live deliveries in seq order per conversation and user across nodes,
  gaps filled from the store (sans-IO);
- presence.py: ClusterPresence, the presence tracker that knows other nodes' users (sans-IO);
- broker.py: ClusterBroker, the core's Broker port: local delivery plus publications;
- link.py: RedisLink, the Trio tasks on Redis: publish, subscribe, heartbeat, gaps, and the
  node's health while Redis is away;
- resp.py: the link's connections for publishing and subscribing, on Trio streams (replies
  parsed by coredis's sans-IO parser);
- calls.py: ClusterCalls, call signalling between nodes.
"""

from relay.cluster.broker import ClusterBroker
from relay.cluster.link import RedisLink

__all__ = ["ClusterBroker", "RedisLink"]
