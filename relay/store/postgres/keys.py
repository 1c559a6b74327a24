"""PostgreSQL's KeyStore (relay.store.base): devices' end-to-end public keys, one row per
(user, device), replaced by a re-publish. Table `device_keys` (schema.py).

`publish` runs in the writer thread inside its batch transaction (durable once the batch
committed), `device_keys` on a read connection (store.py). Every node reads the same rows, so
a device's keys published through one node are what `keys_get` answers on every other.
"""

from __future__ import annotations

from relay.store.base import DeviceKeys
from relay.store.postgres.rows import Conn


def publish(conn: Conn, keys: DeviceKeys) -> None:
    conn.execute(
        "INSERT INTO device_keys (user_id, device_id, identity_key, enc_key, signature, "
        "updated_at) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (user_id, device_id) DO UPDATE "
        "SET identity_key = excluded.identity_key, enc_key = excluded.enc_key, "
        "signature = excluded.signature, updated_at = excluded.updated_at",
        (
            keys.user_id,
            keys.device_id,
            keys.identity_key,
            keys.enc_key,
            keys.signature,
            keys.updated_at,
        ),
    )


def device_keys(conn: Conn, user_id: str) -> list[DeviceKeys]:
    rows = conn.execute(
        "SELECT user_id, device_id, identity_key, enc_key, signature, updated_at "
        "FROM device_keys WHERE user_id = %s ORDER BY device_id",
        (user_id,),
    ).fetchall()
    return [DeviceKeys(*row) for row in rows]
