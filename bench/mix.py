"""The `mix` scenario's frames: pairwise with the message bodies real clients send.

Each sender cycles through PATTERN over BODIES (JSON members after the addressee, filled in by
the load generator: "{text}", "{user}" the sender, "{file}" the file that sender uploaded):
a third of its messages carry a small `meta` (a reply and a mention), one in six is end-to-end
encrypted for three devices (the recipient's two and the sender's other one; shape per the
protocol's "End-to-end encryption": no `text`, one HPKE box per device, sized as the box of
the same 100-byte text: 32-byte encapsulated key + ciphertext + 16-byte tag, base64), one in
six has an attachment, the rest are plain text.

Attachments are files the sender uploaded (`POST /files` with its session's httpToken, through
the relay's own client library), so the relay checks and grants them as it would a user's;
node-ws forwards frames blindly and gets the same frame with an id of the same length.
Each sender sends its one file again and again: only its first message stores a grant (awaited,
a file write with fsync in the files directory); the others find it in the relay's files index
and go inline. A client sending a new file each time pays that write once per file.
"""

from __future__ import annotations

import base64
import hashlib

import trio

from relay.client import RelayClient

_BOX = base64.b64encode(hashlib.shake_256(b"relay bench box").digest(32 + 100 + 16)).decode()

BODIES = [
    '"text":"{text}"',
    '"text":"{text}","meta":{"replyTo":"1733390000000000000.7","mentions":["{user}"],'
    '"client":"bench/1"}',
    '"e2e":{"v":1,"suite":"hpke-x25519-sha256-aes256gcm","senderDevice":"{user}-phone",'
    '"boxes":{"peer-phone":"' + _BOX + '","peer-laptop":"' + _BOX + '",'
    '"{user}-laptop":"' + _BOX + '"}}',
    '"text":"{text}","attachments":[{"fileId":"{file}"}]',
]
#: plain, meta, e2e, plain, meta, attachment: meta 1/3, e2e 1/6, attachments 1/6
PATTERN = [0, 1, 2, 0, 1, 3]
#: the uploaded file (a small PNG-sized body)
FILE_BYTES = 2048
#: uploads in flight at once
CONCURRENCY = 16


def stand_in_files(users: list[str], file_id_length: int = 24) -> dict[str, str]:
    """File ids for a server that has no /files (node-ws forwards them unread)."""
    return {user: f"{i:0{file_id_length}x}" for i, user in enumerate(users)}


def upload_files(url: str, users: list[str], timeout: float = 120.0) -> dict[str, str]:
    """Each user's fileId: one file uploaded by that user (authenticated as it) to the relay
    at `url` (ws://host:port)."""
    return trio.run(_upload_all, url, users, timeout)


async def _upload_all(url: str, users: list[str], seconds: float) -> dict[str, str]:
    files: dict[str, str] = {}
    limit = trio.Semaphore(CONCURRENCY)
    body = bytes(range(256)) * (FILE_BYTES // 256)

    async def one(user: str) -> None:
        async with (
            limit,
            RelayClient(
                url, user_id=user, user_name=user, sync_on_connect=False, reconnect_attempts=0
            ) as client,
        ):
            await client.wait_online()
            info = await client.upload_file(body, name="photo.bin")
            files[user] = info.file_id

    with trio.fail_after(seconds):
        async with trio.open_nursery() as nursery:
            for user in users:
                nursery.start_soon(one, user)
    return files
