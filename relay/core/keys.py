"""Keys: the relay's directory of devices' end-to-end public keys (contract v2, "End-to-end
encryption"). Sans-IO.

- `keys_publish` stores the keys of the connection's own device (a `deviceId` other than the
  one its auth_ok named gets `forbidden`); the answer is the user's `keys` (with `ref`).
- `keys_get {userId}` answers `keys` with every device of that user that published keys.
- Over a store without the KeyStore ability both get `not_found` (this relay keeps no keys).
The relay never sees a private key or a plaintext; it cannot vouch for the keys either —
clients verify each device's signature and watch identity keys change.
"""

from __future__ import annotations

from attrs import define, field

from relay.core.context import Context
from relay.core.session import Session
from relay.ports import Connection
from relay.protocol.keys import KeysGetFrame, KeysPublishFrame, encode_keys
from relay.store.base import DeviceKeys, KeyStore


@define(eq=False)
class Keys:
    _ctx: Context
    _store: KeyStore | None = field(init=False)

    def __attrs_post_init__(self) -> None:
        store = self._ctx.store
        self._store = store if isinstance(store, KeyStore) else None

    async def on_publish(self, conn: Connection, session: Session, frame: KeysPublishFrame) -> None:
        ctx = self._ctx
        store = self._available(conn, session, frame.ref)
        if store is None:
            return
        if frame.device_id != session.device_id:
            ctx.error(
                conn,
                session,
                "forbidden",
                "deviceId: a connection publishes only its own device's keys",
                ref=frame.ref,
                field="deviceId",
            )
            return
        user = session.user_id
        await store.publish_keys(
            DeviceKeys(
                user, frame.device_id, frame.identity_key, frame.enc_key, frame.signature,
                ctx.now_iso(),
            )
        )  # fmt: skip
        ctx.send(conn, session, encode_keys(user, await store.device_keys(user), ref=frame.ref))

    async def on_get(self, conn: Connection, session: Session, frame: KeysGetFrame) -> None:
        store = self._available(conn, session, frame.ref)
        if store is None:
            return
        devices = await store.device_keys(frame.user_id)
        self._ctx.send(conn, session, encode_keys(frame.user_id, devices, ref=frame.ref))

    def _available(self, conn: Connection, session: Session, ref: str | None) -> KeyStore | None:
        if self._store is None:
            self._ctx.error(conn, session, "not_found", "this relay keeps no keys", ref=ref)
        return self._store
