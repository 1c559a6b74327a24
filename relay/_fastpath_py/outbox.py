"""The bounded queue of encoded frames of one connection."""

from __future__ import annotations

from collections.abc import Sequence

from attrs import define, field


@define(eq=False)
class Outbox:
    """The bounded queue of encoded frames for one connection.

    Invariants: `pending_bytes`/`pending_frames` are the sums over `_chunks`; `_droppable` is
    None only while no queued frame is droppable, else `_droppable[i]` says whether
    `_chunks[i]` may still be dropped (never a tail put back by unsend). `_chunks` is one list
    for the outbox's life (take() empties it): nothing is allocated per flush.
    Limits bound push, never unsend: bytes handed back were already promised to the peer.
    `dropped` counts the droppable frames refused or dropped to make room since the owner last
    reset it (the shell adds it to its counters when it writes the outbox).
    """

    max_bytes: int
    max_frames: int
    pending_bytes: int = field(init=False, default=0)
    pending_frames: int = field(init=False, default=0)
    _chunks: list[bytes] = field(init=False, factory=list)
    _droppable: list[bool] | None = field(init=False, default=None)
    _droppable_bytes: int = field(init=False, default=0)
    _droppable_frames: int = field(init=False, default=0)
    dropped: int = field(init=False, default=0)

    def push(self, frame: bytes, droppable: bool = False) -> bool:
        """Queue a frame. Droppable frames (typing, presence) are refused when the outbox is
        over half full; when a non-droppable frame does not fit, droppable frames queued are
        dropped first; returns False when it still does not fit (the caller then closes with
        1013).

        "Over half full": more than max_bytes/2 bytes or more than max_frames/2 frames queued.
        Droppable frames are dropped oldest first, only as many as needed, and only when
        dropping them makes room: a refused push leaves the outbox unchanged.
        """
        n = len(frame)
        new_bytes = self.pending_bytes + n
        new_frames = self.pending_frames + 1
        if droppable:
            if (
                self.pending_bytes * 2 > self.max_bytes
                or self.pending_frames * 2 > self.max_frames
                or new_bytes > self.max_bytes
                or new_frames > self.max_frames
            ):
                self.dropped += 1
                return False
            if self._droppable is None:
                self._droppable = [False] * len(self._chunks)
            self._droppable_bytes += n
            self._droppable_frames += 1
        elif new_bytes > self.max_bytes or new_frames > self.max_frames:
            if (
                new_bytes - self._droppable_bytes > self.max_bytes
                or new_frames - self._droppable_frames > self.max_frames
            ):
                return False
            self._drop_until(new_bytes - self.max_bytes, new_frames - self.max_frames)
        self._chunks.append(frame)
        if self._droppable is not None:
            self._droppable.append(droppable)
        self.pending_bytes += n
        self.pending_frames += 1
        return True

    def push_all(self, frames: Sequence[bytes]) -> int:
        """`push` each of `frames` (a list or tuple; none droppable), in order, stopping at the
        first that does not fit: returns how many were queued."""
        push = self.push
        for i, frame in enumerate(frames):
            if not push(frame):
                return i
        return len(frames)

    def _drop_until(self, excess_bytes: int, excess_frames: int) -> None:
        """Drop droppable frames, oldest first, until `excess_*` (<= their sums) are freed."""
        chunks: list[bytes] = []
        flags: list[bool] = []
        freed_bytes = 0
        freed_frames = 0
        droppable = self._droppable
        assert droppable is not None  # only called while droppable frames are queued
        for chunk, drop in zip(self._chunks, droppable, strict=True):
            if drop and (freed_bytes < excess_bytes or freed_frames < excess_frames):
                freed_bytes += len(chunk)
                freed_frames += 1
                continue
            chunks.append(chunk)
            flags.append(drop)
        self._chunks = chunks
        self._droppable = flags
        self.pending_bytes -= freed_bytes
        self.pending_frames -= freed_frames
        self._droppable_bytes -= freed_bytes
        self._droppable_frames -= freed_frames
        self.dropped += freed_frames

    def take(self) -> bytes:
        """Everything queued, joined; the outbox is then empty."""
        chunks = self._chunks
        if not chunks:
            return b""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._droppable = None
        self.pending_bytes = 0
        self.pending_frames = 0
        self._droppable_bytes = 0
        self._droppable_frames = 0
        return data

    def unsend(self, rest: bytes) -> None:
        """Put back the unwritten tail of what take() gave (partial send), ahead of anything
        queued since; it counts as one frame that cannot be dropped."""
        if not rest:
            return
        self._chunks.insert(0, bytes(rest))
        if self._droppable is not None:
            self._droppable.insert(0, False)
        self.pending_bytes += len(rest)
        self.pending_frames += 1
