"""Where uploaded files live: the BlobStore Protocol and LocalBlobStore, a directory (the
PostgreSQL store's database holds them in relay/store/postgres/blobs.py).

A file is its bytes (the blob) and its FileRecord (who uploaded it, its name, size, type and
SHA-256). A file exists for readers once its record is stored, which is after its blob is
whole and durable.

LocalBlobStore's layout: `<dir>/<fileId>` the bytes, `<dir>/<fileId>.json` the record,
`<dir>/<fileId>.readers` the users a message carrying it was sent to (a JSON list, replaced
whole), `<dir>/tmp/` the uploads in progress (the directory is made, owner-only, by the first upload).
Invariants:
- a blob is written under a random temporary name in tmp/, fsynced, then renamed to its file id
  (and the directory fsynced); the record likewise. A process killed during an upload leaves
  only a temporary file, which no read can name and `open` removes;
- a file id is random (URL-safe base64 of 18 bytes) and is checked against that alphabet before
  it is used in a path, so a client's id can never name another path;
- bytes are streamed through a running SHA-256, never held whole in memory.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Protocol, runtime_checkable

import orjson
import trio
from attrs import asdict, define, field, frozen

from relay.errors import StoreUnavailable

_ID = re.compile(r"^[A-Za-z0-9_-]{24}$")
READ_CHUNK = 64 * 1024


@frozen
class FileRecord:
    file_id: str
    owner: str
    name: str
    size: int
    mime: str
    sha256: str
    created_at: str

    def public(self) -> dict[str, object]:
        """The file as the contract names it (`201` answer, attachments)."""
        return {
            "fileId": self.file_id,
            "name": self.name,
            "size": self.size,
            "mime": self.mime,
            "sha256": self.sha256,
        }


def new_file_id() -> str:
    return secrets.token_urlsafe(18)


def valid_file_id(file_id: str) -> bool:
    return _ID.match(file_id) is not None


@runtime_checkable
class BlobStore(Protocol):
    async def open(self) -> None:
        """Prepare the storage (and drop what interrupted uploads left)."""

    async def close(self) -> None: ...

    async def write(self, file_id: str, chunks: AsyncIterable[bytes]) -> tuple[int, str]:
        """Store `chunks` as the bytes of `file_id`; returns (size, SHA-256 hex). Whatever
        `chunks` raises is raised after the partial bytes are gone."""

    async def save(self, record: FileRecord) -> None:
        """Store the record: from now on the file exists."""

    async def record(self, file_id: str) -> FileRecord | None:
        """The file's record; None for an id that names no stored file."""

    def read(self, file_id: str, first: int, last: int) -> AsyncIterator[bytes]:
        """Bytes first..last (inclusive) of a stored file, in chunks."""

    async def delete(self, file_id: str) -> None: ...

    async def created_before(self, moment: str) -> list[str]:
        """The ids of the stored files whose `created_at` is before `moment` (ISO-8601 UTC)."""

    async def grant(self, file_id: str, readers: Sequence[str]) -> None:
        """Add `readers` to the users who may read the file (a message carrying it was sent
        to them)."""

    async def readers(self, file_id: str) -> frozenset[str]:
        """The users granted the file (empty: only its uploader reads it)."""


@runtime_checkable
class ForgetsUncarried(Protocol):
    """A BlobStore that knows which messages carry its files (it shares the store's database):
    the uploads sweep also deletes the files whose messages are all deleted."""

    async def uncarried(self, *, limit: int = 1000) -> list[str]:
        """Up to `limit` ids of files granted to readers (a message carried them) that no
        stored message carries any more."""
        ...


@define(eq=False)
class _Turn:
    lock: trio.Lock = field(factory=trio.Lock)
    users: int = 0  # tasks holding or waiting for the lock


@define(eq=False)
class _FileTurns:
    """One lock per file id, kept only while a task holds or waits for it: the grants of one
    file take turns, those of different files run at once. A message's answer waits for its
    grant (two fsyncs): with one lock for every file, a hundred senders' first attachments
    queued behind one another and the `mix` bench's p99.9 was 2.2-2.5 s (2026-12-06)."""

    _turns: dict[str, _Turn] = field(factory=dict)

    @asynccontextmanager
    async def turn(self, file_id: str) -> AsyncIterator[None]:
        turns = self._turns
        turn = turns.get(file_id)
        if turn is None:
            turn = turns[file_id] = _Turn()
        turn.users += 1
        try:
            async with turn.lock:
                yield
        finally:
            turn.users -= 1
            if not turn.users:
                del turns[file_id]

    def __len__(self) -> int:
        return len(self._turns)


class LocalBlobStore:
    """A BlobStore in a local directory (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._tmp = self.directory / "tmp"
        self._granting = _FileTurns()  # a grant reads, then replaces, the file's readers file

    async def open(self) -> None:
        # the directory itself is made by the first upload (a relay nobody uploads to makes none)
        await trio.to_thread.run_sync(lambda: shutil.rmtree(self._tmp, ignore_errors=True))

    def _prepare(self) -> None:
        try:
            self.directory.mkdir(mode=0o700, exist_ok=True)
            self._tmp.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(
                f"{self.directory}: cannot make the files directory: {exc.strerror or exc}"
            ) from None

    async def close(self) -> None:
        pass

    def _path(self, file_id: str, suffix: str = "") -> Path:
        if not valid_file_id(file_id):
            raise ValueError("not a file id")
        return self.directory / (file_id + suffix)

    async def _commit(self, temporary: Path, final: Path) -> None:
        def rename() -> None:
            os.replace(temporary, final)
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        await trio.to_thread.run_sync(rename)

    async def write(self, file_id: str, chunks: AsyncIterable[bytes]) -> tuple[int, str]:
        final = self._path(file_id)
        temporary = self._tmp / secrets.token_hex(16)
        digest = hashlib.sha256()
        size = 0
        await trio.to_thread.run_sync(self._prepare)
        try:
            async with await trio.open_file(temporary, "xb") as out:
                async for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    await out.write(chunk)
                await out.flush()
                await trio.to_thread.run_sync(os.fsync, out.fileno())
            await self._commit(temporary, final)
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(lambda: temporary.unlink(missing_ok=True))
            raise
        return size, digest.hexdigest()

    async def save(self, record: FileRecord) -> None:
        final = self._path(record.file_id, ".json")
        temporary = self._tmp / secrets.token_hex(16)

        def write() -> None:
            with open(temporary, "xb") as out:
                out.write(orjson.dumps(asdict(record)))
                out.flush()
                os.fsync(out.fileno())

        await trio.to_thread.run_sync(write)
        await self._commit(temporary, final)

    async def record(self, file_id: str) -> FileRecord | None:
        if not valid_file_id(file_id):
            return None
        path = self._path(file_id, ".json")

        def load() -> FileRecord | None:
            try:
                data = orjson.loads(path.read_bytes())
            except FileNotFoundError:
                return None
            return FileRecord(**data)

        return await trio.to_thread.run_sync(load)

    async def read(self, file_id: str, first: int, last: int) -> AsyncIterator[bytes]:
        async with await trio.open_file(self._path(file_id), "rb") as source:
            await source.seek(first)
            left = last - first + 1
            while left > 0:
                chunk = await source.read(min(READ_CHUNK, left))
                if not chunk:
                    return
                left -= len(chunk)
                yield chunk

    async def delete(self, file_id: str) -> None:
        def remove() -> None:
            self._path(file_id, ".json").unlink(missing_ok=True)
            self._path(file_id, ".readers").unlink(missing_ok=True)
            self._path(file_id).unlink(missing_ok=True)

        await trio.to_thread.run_sync(remove)

    async def created_before(self, moment: str) -> list[str]:
        def scan() -> list[str]:
            found: list[str] = []
            if not self.directory.exists():
                return found
            for path in self.directory.glob("*.json"):
                try:
                    data = orjson.loads(path.read_bytes())
                except (OSError, orjson.JSONDecodeError):
                    continue
                if isinstance(data, dict) and str(data.get("created_at", "")) < moment:
                    found.append(path.stem)
            return found

        return await trio.to_thread.run_sync(scan)

    async def grant(self, file_id: str, readers: Sequence[str]) -> None:
        async with self._granting.turn(file_id):
            known = await self.readers(file_id)
            if known.issuperset(readers):
                return
            final = self._path(file_id, ".readers")
            temporary = self._tmp / secrets.token_hex(16)
            body = orjson.dumps(sorted(known.union(readers)))

            def write() -> None:
                self._prepare()
                with open(temporary, "xb") as out:
                    out.write(body)
                    out.flush()
                    os.fsync(out.fileno())

            await trio.to_thread.run_sync(write)
            await self._commit(temporary, final)

    async def readers(self, file_id: str) -> frozenset[str]:
        if not valid_file_id(file_id):
            return frozenset()
        path = self._path(file_id, ".readers")

        def load() -> frozenset[str]:
            try:
                return frozenset(orjson.loads(path.read_bytes()))
            except FileNotFoundError:
                return frozenset()

        return await trio.to_thread.run_sync(load)
