"""Calls across nodes: the routing of relay.core.calls (CallRouting) over the cluster's Redis.

A call lives on its caller's node, its home (relay.core.calls keeps it there). What the home
says to the callee's devices on other nodes goes to the callee's user channel, to which every
node holding one of them is subscribed; what those nodes say back goes to the caller's user
channel, to which the home is subscribed (it holds the caller's device). Both are envelopes of
kind CALL (relay.cluster.envelope) whose body is a JSON object naming its `op` and `call`:

home -> the callee's nodes          a callee's node -> the home
  probe    is the callee busy, and     probed   {busy, devices}: every node that holds the
           which devices are there              callee answers (the home waits for those
  invite   ring them (offer, caller)            presence says hold them, PROBE_WAIT at most)
  answered {node, device} took it:     rang     {devices} it rang for the invite
           the others stop ringing     accept / reject / hangup / signal_up
  end      {reason, skip}                       a device's frame, with its device id
  signal   the caller's call_signal    dropped  a device in the call closed
  error    {node, device, code, ...}: a refusal of a device's frame

A node keeps the calls homed elsewhere that rang its devices as guests: their ringing and
answering connections, so that a device's frames for them go to the home (`forward`), and so
that it answers a probe `busy` for a user who is in one. The home decides everything else
(phases, refusals, the record). Envelopes of this node itself never come back to it.

A home node that dies never ends its calls: the devices ringing here for one stop with
`timeout` a little past call_ring_timeout (`tick`). Not covered: a user ringing here for a call
homed elsewhere may still place a call from this node.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import orjson
import trio
from attrs import define, field

from relay.core.calls import (
    Call,
    CallFrameIn,
    Calls,
    Probe,
    RemoteDevice,
)
from relay.core.context import Context
from relay.core.session import Session
from relay.ports import Connection
from relay.protocol.calls import (
    CallAcceptFrame,
    CallEndFrame,
    CallRejectFrame,
    CallSignalFrame,
    encode_call_end,
    encode_call_invite,
    encode_call_signal,
)

log = logging.getLogger("relay.cluster")

#: seconds the home waits at most for a node that holds the callee to answer a probe (a node
#: that died never does; presence forgets it within its ttl)
PROBE_WAIT = 2.0


class CallBroker(Protocol):
    """What the calls need of their node's broker (relay.cluster.broker.ClusterBroker): its
    node id, its context, a publication to a user's channel, and the other nodes holding a
    user. Only typed, never checked at run time (the broker hands itself in)."""

    @property
    def node_id(self) -> str: ...

    @property
    def ctx(self) -> Context: ...

    def publish_call(self, user: str, body: bytes) -> None:
        """A CALL envelope with `body` to every node holding a device of `user`."""
        ...

    def nodes_of(self, user: str) -> list[str]:
        """The other nodes that hold `user` (presence entries not expired)."""
        ...


@define(eq=False)
class _Guest:
    """A call homed on another node that rang devices of this node."""

    call_id: str
    home: str
    caller: str
    callee: str
    deadline: float  # monotonic: past it, a call still ringing here lost its home
    ringing: dict[int, Connection] = field(factory=dict)
    answered: Connection | None = None

    def connections(self) -> list[Connection]:
        found = list(self.ringing.values())
        if self.answered is not None:
            found.append(self.answered)
        return found


@define(eq=False)
class _Probing:
    waiting: set[str]  # the nodes that hold the callee and have not answered yet
    done: trio.Event = field(factory=trio.Event)
    busy: bool = False
    devices: list[RemoteDevice] = field(factory=list)


def _session(conn: Connection) -> Session:
    session = conn.state
    assert isinstance(session, Session)
    return session


class ClusterCalls:
    """relay.core.calls.CallRouting for one node of several (see the module docstring)."""

    def __init__(self, broker: CallBroker, calls: Calls) -> None:
        self.broker = broker
        self.calls = calls
        self.node = broker.node_id
        self._guests: dict[str, _Guest] = {}
        self._by_conn: dict[int, set[str]] = {}  # connection id -> guest callIds it is in
        self._probing: dict[str, _Probing] = {}

    # --- to the other nodes ----------------------------------------------------------------------
    def _say(self, user: str, op: str, call_id: str, **fields: Any) -> None:
        self.broker.publish_call(user, orjson.dumps({"op": op, "call": call_id, **fields}))

    # --- CallRouting: this node is the call's home ------------------------------------------------
    async def probe(self, call: Call) -> Probe:
        if self._guest_busy(call.callee):
            return Probe(True, ())
        nodes = [n for n in self.broker.nodes_of(call.callee) if n != self.node]
        if not nodes:
            return Probe(False, ())
        probing = self._probing[call.call_id] = _Probing(set(nodes))
        self._say(call.callee, "probe", call.call_id, caller=call.caller, callee=call.callee)
        try:
            with trio.move_on_after(PROBE_WAIT):
                await probing.done.wait()
        finally:
            del self._probing[call.call_id]
        if probing.waiting:
            log.warning(
                "call %s: node(s) %s did not answer its probe",
                call.call_id,
                sorted(probing.waiting),
            )
        return Probe(probing.busy, tuple(probing.devices))

    def invite(self, call: Call, sdp: str) -> None:
        self._say(
            call.callee,
            "invite",
            call.call_id,
            caller=call.caller,
            callerName=call.caller_name,
            callee=call.callee,
            media=call.media,
            sdp=sdp,
        )

    def answered(self, call: Call, by: RemoteDevice | None) -> None:
        node, device = (by.node, by.device_id) if by is not None else (self.node, None)
        self._say(call.callee, "answered", call.call_id, node=node, device=device)

    def ended(self, call: Call, reason: str, skip: RemoteDevice | None) -> None:
        self._say(
            call.callee,
            "end",
            call.call_id,
            reason=reason,
            skipNode=skip.node if skip is not None else None,
            skipDevice=skip.device_id if skip is not None else None,
        )

    def signal(self, call: Call, payload: dict[str, Any]) -> None:
        self._say(call.callee, "signal", call.call_id, payload=payload)

    def error(self, call: Call, to: RemoteDevice, code: str, message: str, ref: str | None) -> None:
        self._say(
            call.callee,
            "error",
            call.call_id,
            node=to.node,
            device=to.device_id,
            code=code,
            message=message,
            ref=ref,
        )

    # --- CallRouting: this node's devices in calls homed elsewhere --------------------------------
    def forward(self, conn: Connection, session: Session, frame: CallFrameIn) -> bool:
        guest = self._guests.get(frame.call_id)
        if guest is None:
            return False
        ctx = self.broker.ctx
        device = session.device_id
        if isinstance(frame, CallAcceptFrame | CallRejectFrame):
            if conn.id not in guest.ringing:
                if conn is guest.answered:
                    why, code = "the call is no longer ringing", "invalid"
                else:
                    why, code = "this device is not in the call", "forbidden"
                ctx.error(conn, session, code, why, ref=frame.ref, field="callId")
            elif isinstance(frame, CallAcceptFrame):
                self._say(guest.caller, "accept", guest.call_id, device=device, sdp=frame.sdp,
                          ref=frame.ref)  # fmt: skip
            else:
                self._say(guest.caller, "reject", guest.call_id, device=device, ref=frame.ref)
        elif isinstance(frame, CallEndFrame):
            if conn.id in guest.ringing or conn is guest.answered:
                self._say(guest.caller, "hangup", guest.call_id, device=device, ref=frame.ref)
            else:
                why = "this device is not in the call"
                ctx.error(conn, session, "forbidden", why, ref=frame.ref, field="callId")
        elif isinstance(frame, CallSignalFrame):
            if conn is guest.answered:
                self._say(guest.caller, "signal_up", guest.call_id, device=device,
                          payload=frame.payload, ref=frame.ref)  # fmt: skip
            else:
                why = "this device is not in the call"
                ctx.error(conn, session, "forbidden", why, ref=frame.ref, field="callId")
        return True

    def dropped(self, conn: Connection) -> None:
        for call_id in self._by_conn.pop(conn.id, set()):
            guest = self._guests.get(call_id)
            if guest is None:
                continue
            guest.ringing.pop(conn.id, None)
            if guest.answered is conn:
                guest.answered = None
            self._say(guest.caller, "dropped", call_id, device=_session(conn).device_id)
            if not guest.connections():
                del self._guests[call_id]

    def tick(self, now: float) -> None:
        lost = [g for g in self._guests.values() if g.answered is None and now >= g.deadline]
        for guest in lost:
            log.warning("call %s: its home node %s never ended it", guest.call_id, guest.home)
            self._end(guest.home, guest.call_id, {"reason": "timeout"})

    # --- from the other nodes ---------------------------------------------------------------------
    def received(self, node: str, body: bytes) -> None:
        """A CALL envelope of `node` (on a user channel this node follows)."""
        msg = orjson.loads(body)
        op, call_id = msg.get("op"), msg.get("call")
        if not isinstance(call_id, str):
            return
        handler = _HOME.get(op) if self.calls.hosts(call_id) or op == "probed" else None
        if handler is None:
            handler = _GUEST.get(op)
        if handler is not None:
            handler(self, node, call_id, msg)

    # the home's side
    def _probed(self, node: str, call_id: str, msg: dict[str, Any]) -> None:
        probing = self._probing.get(call_id)
        if probing is None or node not in probing.waiting:
            return
        probing.waiting.discard(node)
        probing.busy = probing.busy or bool(msg.get("busy"))
        probing.devices += [RemoteDevice(node, d) for d in msg.get("devices", [])]
        if not probing.waiting:
            probing.done.set()

    def _rang(self, node: str, call_id: str, msg: dict[str, Any]) -> None:
        self.calls.remote_rang(call_id, node, list(msg.get("devices", [])))

    def _accept(self, node: str, call_id: str, msg: dict[str, Any]) -> None:
        by = RemoteDevice(node, msg["device"])
        self.calls.remote_accept(call_id, by, msg["sdp"], msg.get("ref"))

    def _reject(self, node: str, call_id: str, msg: dict[str, Any]) -> None:
        self.calls.remote_reject(call_id, RemoteDevice(node, msg["device"]), msg.get("ref"))

    def _hangup(self, node: str, call_id: str, msg: dict[str, Any]) -> None:
        self.calls.remote_end(call_id, RemoteDevice(node, msg["device"]), msg.get("ref"))

    def _signal_up(self, node: str, call_id: str, msg: dict[str, Any]) -> None:
        by = RemoteDevice(node, msg["device"])
        self.calls.remote_signal(call_id, by, msg["payload"], msg.get("ref"))

    def _dropped(self, node: str, call_id: str, msg: dict[str, Any]) -> None:
        self.calls.remote_dropped(call_id, RemoteDevice(node, msg["device"]))

    # a callee's node's side
    def _devices(self, user: str) -> list[Connection]:
        return [c for c in self.broker.ctx.router.connections(user) if _session(c).active]

    def _guest_busy(self, user: str) -> bool:
        return any(g.callee == user and g.connections() for g in self._guests.values())

    def _probe(self, node: str, call_id: str, msg: dict[str, Any]) -> None:
        callee, caller = msg["callee"], msg["caller"]
        busy = self.calls.in_call(callee) or self._guest_busy(callee)
        devices = [] if busy else [_session(c).device_id for c in self._devices(callee)]
        self._say(caller, "probed", call_id, busy=busy, devices=devices)

    def _invite(self, node: str, call_id: str, msg: dict[str, Any]) -> None:
        callee, caller = msg["callee"], msg["caller"]
        devices = [] if call_id in self._guests else self._devices(callee)
        if devices:
            ctx = self.broker.ctx
            # the home ends it at call_ring_timeout; a margin for its probe and the way here
            deadline = ctx.clock() + ctx.config.call_ring_timeout + 2 * PROBE_WAIT
            guest = self._guests[call_id] = _Guest(call_id, node, caller, callee, deadline)
            frame = encode_call_invite(call_id, caller, msg["media"], msg["sdp"], msg["callerName"])
            for conn in devices:
                guest.ringing[conn.id] = conn
                self._by_conn.setdefault(conn.id, set()).add(call_id)
                self.broker.ctx.send(conn, _session(conn), frame)
        self._say(caller, "rang", call_id, devices=[_session(c).device_id for c in devices])

    def _answered(self, node: str, call_id: str, msg: dict[str, Any]) -> None:
        guest = self._guests.get(call_id)
        if guest is None:
            return
        here = msg.get("node") == self.node
        end = encode_call_end(call_id, "answered_elsewhere")
        for conn in list(guest.ringing.values()):
            if here and _session(conn).device_id == msg.get("device"):
                guest.answered = conn
            else:
                self._leave(guest, conn)
                self.broker.ctx.send(conn, _session(conn), end)
        guest.ringing.clear()
        if guest.answered is None:
            del self._guests[call_id]

    def _end(self, node: str, call_id: str, msg: dict[str, Any]) -> None:
        guest = self._guests.pop(call_id, None)
        if guest is None:
            return
        skip = msg.get("skipDevice") if msg.get("skipNode") == self.node else None
        end = encode_call_end(call_id, str(msg.get("reason")))
        for conn in guest.connections():
            self._leave(guest, conn)
            if _session(conn).device_id != skip:
                self.broker.ctx.send(conn, _session(conn), end)

    def _signal_down(self, node: str, call_id: str, msg: dict[str, Any]) -> None:
        guest = self._guests.get(call_id)
        if guest is None:
            return
        frame = encode_call_signal(call_id, msg["payload"])
        targets = [guest.answered] if guest.answered is not None else list(guest.ringing.values())
        for conn in targets:
            self.broker.ctx.send(conn, _session(conn), frame)

    def _error(self, node: str, call_id: str, msg: dict[str, Any]) -> None:
        guest = self._guests.get(call_id)
        if msg.get("node") != self.node or guest is None:
            return
        for conn in guest.connections():
            session = _session(conn)
            if session.device_id == msg.get("device"):
                self.broker.ctx.error(conn, session, str(msg["code"]), str(msg["message"]),
                                      ref=msg.get("ref"), field="callId")  # fmt: skip

    def _leave(self, guest: _Guest, conn: Connection) -> None:
        ids = self._by_conn.get(conn.id)
        if ids is not None:
            ids.discard(guest.call_id)
            if not ids:
                del self._by_conn[conn.id]


_Handler = Any
#: what the home takes (only for calls it hosts; `probed` while it probes)
_HOME: dict[object, _Handler] = {
    "probed": ClusterCalls._probed,
    "rang": ClusterCalls._rang,
    "accept": ClusterCalls._accept,
    "reject": ClusterCalls._reject,
    "hangup": ClusterCalls._hangup,
    "signal_up": ClusterCalls._signal_up,
    "dropped": ClusterCalls._dropped,
}
#: what a callee's node takes
_GUEST: dict[object, _Handler] = {
    "probe": ClusterCalls._probe,
    "invite": ClusterCalls._invite,
    "answered": ClusterCalls._answered,
    "end": ClusterCalls._end,
    "signal": ClusterCalls._signal_down,
    "error": ClusterCalls._error,
}
