"""FileService: `POST /files` and `GET /files/{fileId}` on the relay's port (contract v2,
"Files"), authenticated by a session's `httpToken` (`Authorization: Bearer <token>`).

- Upload: the body is streamed to the BlobStore through a running SHA-256; a declared length
  over `max_file_bytes` is answered 413 before anything is written, and a body that grows past
  it while streaming (chunked) is 413 too, its partial bytes removed: nothing is stored. The
  type is sniffed from the first bytes (relay.files.sniff); the name is cleaned
  (relay.files.names). Answer: 201 with the file's `fileId, name, size, mime, sha256`.
- Download: the uploader, and the users a message carrying the file was sent to (its
  recipient, or its group's members when it was sent; relay.core.attachments), get the bytes (`Range` -> 206, an unsatisfiable one 416), with
  `Content-Disposition` (inline for images, else attachment), `X-Content-Type-Options:
  nosniff` and the stored type. Anyone else, and a wrong or expired token, gets 404, exactly as
  for a file that does not exist; no token at all is 401.
- Errors are JSON: `{"error": code, "message": text}`.
- Retention: an upload not sent in a message within UNSENT_TTL (a day) is deleted, by a sweep
  at start and then at most every SWEEP_INTERVAL, made by the upload that finds it due. A file
  a message carries (one granted to readers) is kept while the message is; with files in the
  PostgreSQL store's database (ForgetsUncarried) the sweep also deletes the files whose
  messages retention deleted.

- The index: the records of the files this node uploaded, and the readers it granted or read,
  are held in memory (at most INDEX_MAX of each, the oldest dropped first), so a message's
  files resolve and a repeated grant is seen to be stored without a thread hop
  (relay.core.attachments `known`, `granted`). A record never changes; readers only grow
  (only a deletion takes them, which drops the file from the index on this node). What the
  index lacks (another node's upload, a dropped entry) is read from the BlobStore. An unsent
  upload's entry is trusted only for UNSENT_TTL: past it any node's sweep may delete the file.

Invariant: a file's bytes are never held whole in memory (chunks of at most 64 KiB each way).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import orjson
from attrs import define, field

from relay.clock import iso_utc
from relay.config import RelayConfig
from relay.core.context import Context
from relay.files.blobs import (
    BlobStore,
    FileRecord,
    ForgetsUncarried,
    LocalBlobStore,
    new_file_id,
)
from relay.files.names import clean_name, content_disposition
from relay.files.ranges import Unsatisfiable, byte_range
from relay.files.sniff import SNIFF_BYTES, content_type
from relay.files.tokens import HttpTokens
from relay.store import POSTGRES_SCHEMES
from relay.transport.httpserver import HttpError, Request, RequestBody, Response, RouteTable


@runtime_checkable
class IssuesHttpTokens(Protocol):
    """A connection handler whose sessions carry an `httpToken` (MessagingService)."""

    http_tokens: HttpTokens


@runtime_checkable
class CarriesFiles(Protocol):
    """A connection handler whose messages may carry files (MessagingService): its context
    takes the FileService as its FileCatalog."""

    ctx: Context


def json_error(request: Request, error: HttpError) -> Response:
    body = orjson.dumps(
        {"error": error.code or _CODES.get(error.status, "error"), "message": error.message}
    )
    headers = [(b"content-type", b"application/json"), *error.headers]
    return Response(error.status, headers, body)


_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    416: "range_not_satisfiable",
}
_NOT_FOUND = "no such file"
UNSENT_TTL = 86400.0
SWEEP_INTERVAL = 3600.0
#: bound of each of the index's maps (a record with its public dict: ~1 kB)
INDEX_MAX = 50_000
_NOBODY: frozenset[str] = frozenset()


class _Indexed(NamedTuple):
    record: FileRecord
    public: dict[str, Any]  # record.public(), made once: messages share it, read-only
    uploaded: float  # by FileService.wall


@define(eq=False)
class FileService:
    config: RelayConfig
    blobs: BlobStore
    tokens: HttpTokens
    wall: Callable[[], float] = time.time
    _next_sweep: float = field(default=0.0, init=False)  # by self.tokens.clock
    _temporary: tempfile.TemporaryDirectory[str] | None = field(default=None, kw_only=True)
    _records: dict[str, _Indexed] = field(factory=dict, init=False)
    _readers: dict[str, frozenset[str]] = field(factory=dict, init=False)

    @classmethod
    def for_config(cls, config: RelayConfig, tokens: HttpTokens) -> FileService:
        """Files in `files_dir`; else, with the PostgreSQL store, in its database (every node
        on it serves every file); else in `<db_path>.files`; else in a temporary directory
        (removed by `close`: a relay keeping nothing keeps no files either)."""
        temporary = None
        if config.files_dir is not None:
            directory = config.files_dir
        elif config.db_path is not None and config.db_path.startswith(POSTGRES_SCHEMES):
            from relay.store.postgres.blobs import PostgresBlobStore

            return cls(config, PostgresBlobStore(config.db_path), tokens)
        elif config.db_path is not None:
            directory = config.db_path + ".files"
        else:
            temporary = tempfile.TemporaryDirectory(prefix="relay-files-")
            directory = temporary.name
        return cls(config, LocalBlobStore(directory), tokens, temporary=temporary)

    def install(self, routes: RouteTable) -> None:
        routes.claim("/files", errors=json_error)
        routes.add("POST", "/files", self.upload, max_body=self.config.max_file_bytes)
        routes.add("GET", "/files/{fileId}", self.download)

    async def open(self) -> None:
        await self.blobs.open()
        await self.sweep()

    async def sweep(self) -> int:
        """Delete the uploads older than UNSENT_TTL that no message carries and, when the
        blobs know the messages (ForgetsUncarried), the files whose messages are all deleted;
        how many went."""
        self._next_sweep = self.tokens.clock() + SWEEP_INTERVAL
        gone = await self.blobs.created_before(iso_utc(self.wall() - UNSENT_TTL))
        deleted = 0
        for file_id in gone:
            if await self.blobs.readers(file_id):  # a message carries it
                continue
            await self._delete(file_id)
            deleted += 1
        if isinstance(self.blobs, ForgetsUncarried):
            while uncarried := await self.blobs.uncarried(limit=1000):
                for file_id in uncarried:
                    await self._delete(file_id)
                deleted += len(uncarried)
        return deleted

    async def _delete(self, file_id: str) -> None:
        self._records.pop(file_id, None)
        self._readers.pop(file_id, None)
        await self.blobs.delete(file_id)

    async def close(self) -> None:
        await self.blobs.close()
        if self._temporary is not None:
            self._temporary.cleanup()

    def _user(self, request: Request, *, missing: int = 401, wrong: int = 404) -> str:
        value = request.header(b"authorization")
        if value is None:
            raise HttpError(
                missing, "an httpToken is required", headers=[(b"www-authenticate", b"Bearer")]
            )
        scheme, _, token = value.decode("latin-1").partition(" ")
        user = None
        if scheme.lower() == "bearer" and token.strip():
            user = self.tokens.user_of(token.strip(), self.tokens.clock())
        if user is None:
            if wrong == 401:
                raise HttpError(
                    401, "the token is not valid", headers=[(b"www-authenticate", b"Bearer")]
                )
            raise HttpError(404, _NOT_FOUND)
        return user

    async def upload(self, request: Request, body: RequestBody) -> Response:
        user = self._user(request, wrong=401)
        limit = self.config.max_file_bytes
        if body.length is not None and body.length > limit:
            raise HttpError(413, f"a file is at most {limit} bytes (max_file_bytes)")
        if self.tokens.clock() >= self._next_sweep:
            await self.sweep()
        name = clean_name(request.query_params().get("name"))
        claimed = request.header(b"content-type")
        head = bytearray()

        async def chunks() -> AsyncIterator[bytes]:
            async for chunk in body:
                if len(head) < SNIFF_BYTES:
                    head.extend(chunk[: SNIFF_BYTES - len(head)])
                yield chunk

        file_id = new_file_id()
        size, sha256 = await self.blobs.write(file_id, chunks())
        record = FileRecord(
            file_id=file_id,
            owner=user,
            name=name,
            size=size,
            mime=content_type(bytes(head), claimed.decode("latin-1") if claimed else None),
            sha256=sha256,
            created_at=iso_utc(self.wall()),
        )
        await self.blobs.save(record)
        public = record.public()
        records = self._records
        if len(records) >= INDEX_MAX:
            del records[next(iter(records))]
        records[file_id] = _Indexed(record, public, self.wall())
        return Response(
            201,
            [(b"content-type", b"application/json"), (b"location", f"/files/{file_id}".encode())],
            orjson.dumps(public),
        )

    async def download(self, request: Request, body: RequestBody) -> Response:
        user = self._user(request)
        record = await self.blobs.record(request.params["fileId"])
        if record is None or not await self.may_read(user, record):
            raise HttpError(404, _NOT_FOUND)
        headers = [
            (b"content-type", record.mime.encode()),
            (b"content-disposition", content_disposition(record.name, record.mime)),
            (b"x-content-type-options", b"nosniff"),
            (b"accept-ranges", b"bytes"),
            (b"etag", f'"{record.sha256}"'.encode()),
            (b"cache-control", b"private, no-cache"),
        ]
        size = record.size
        try:
            wanted = byte_range(request.header(b"range"), size)
        except Unsatisfiable:
            raise HttpError(
                416,
                "the range is outside the file",
                headers=[(b"content-range", f"bytes */{size}".encode())],
            ) from None
        if wanted is None:
            return Response(200, headers, self.blobs.read(record.file_id, 0, size - 1), length=size)
        first, last = wanted
        headers.append((b"content-range", f"bytes {first}-{last}/{size}".encode()))
        return Response(
            206, headers, self.blobs.read(record.file_id, first, last), length=last - first + 1
        )

    async def may_read(self, user: str, record: FileRecord) -> bool:
        """The uploader, and the users a message carrying the file was sent to."""
        file_id = record.file_id
        if user == record.owner or user in self._readers.get(file_id, _NOBODY):
            return True
        stored = await self.blobs.readers(file_id)  # another node may have granted it
        if stored:
            self._know_readers(file_id, stored)
        return user in stored

    def _know_readers(self, file_id: str, readers: frozenset[str]) -> None:
        known = self._readers
        held = known.get(file_id)
        if held is None and len(known) >= INDEX_MAX:
            del known[next(iter(known))]
        known[file_id] = readers if held is None else held | readers

    # --- relay.core.attachments.FileCatalog: the pipeline's view ---------------------------------
    def known(self, owner: str, file_ids: Sequence[str]) -> list[dict[str, Any]] | None:
        records = self._records
        found: list[dict[str, Any]] = []
        for file_id in file_ids:
            indexed = records.get(file_id)
            if indexed is None or indexed.record.owner != owner:
                return None
            if file_id not in self._readers and self.wall() - indexed.uploaded >= UNSENT_TTL:
                return None  # unsent for a day: a sweep may have deleted it
            found.append(indexed.public)
        return found

    def granted(self, file_ids: Sequence[str], readers: Sequence[str]) -> bool:
        known = self._readers
        for file_id in file_ids:
            held = known.get(file_id)
            if held is None or not held.issuperset(readers):
                return False
        return True

    async def resolve(self, owner: str, file_ids: Sequence[str]) -> list[dict[str, Any]] | None:
        found = self.known(owner, file_ids)
        if found is not None:
            return found
        found = []
        for file_id in file_ids:
            record = await self.blobs.record(file_id)
            if record is None or record.owner != owner:
                return None
            found.append(record.public())
        return found

    async def grant(self, file_ids: Sequence[str], readers: Sequence[str]) -> None:
        for file_id in dict.fromkeys(file_ids):
            if self.granted((file_id,), readers):
                continue
            await self.blobs.grant(file_id, readers)
            self._know_readers(file_id, frozenset(readers))
