"""The messaging core (sans-IO: no trio, no sockets): one module per concern.

service.py     MessagingService: the ConnectionHandler; routes frames to the parts below
pipeline.py    every message: check -> append -> answer -> sequence -> deliver
sequencer.py   deliveries released in seq order per conversation
broker.py      the Broker port; LocalBroker delivers to this process's connections
backlog.py     what a device missed, in batches, before live delivery (a state machine)
marks.py       delivery marks of acks=false devices on their way to the store
receipts.py    delivered/read watermarks, their receipts, the catch-up
groups.py      group create/add/remove/leave
history.py     history pages and the conversation list
status.py      presence frames and announcements; presence.py keeps who is online
indicators.py  typing frames; typing_state.py keeps who is typing
session.py     one connection's session (a state machine)
context.py     what the parts share: settings, store, clocks, routing, sending
router.py      user -> live connections; group cache
ratelimit.py   token buckets
"""

from relay.core.service import MessagingService

__all__ = ["MessagingService"]
