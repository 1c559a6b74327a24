"""The pipeline's port to the files a message carries (contract v2, "Files"; relay.files).

A `message` may name 1-10 files it carries (`attachments: [{fileId}]`). Before the
synchronous checks, the pipeline resolves them (`FileCatalog.resolve`): each must have been
uploaded by the sender, else the message is refused (`failed`, reason `invalid`, field
`attachments`); the message is then stored and forwarded with each file's public record
(`fileId, name, size, mime, sha256`). Once stored, the files are granted to the message's
audience (`FileCatalog.grant`), who may then download them.

The fast path: `known` and `granted` answer from what the catalog holds in memory, without
waiting. A message whose files are `known` and already `granted` to its audience is taken
inline like any other (nothing to read, nothing to write); any other goes the awaited way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class FileCatalog(Protocol):
    async def resolve(self, owner: str, file_ids: Sequence[str]) -> list[dict[str, Any]] | None:
        """The files' public records, in `file_ids`' order, when `owner` uploaded every one of
        them; None when any is unknown or another user's."""

    async def grant(self, file_ids: Sequence[str], readers: Sequence[str]) -> None:
        """Let `readers` (the audience of a stored message carrying the files) read them; a
        granted file is kept by the uploads sweep."""

    def known(self, owner: str, file_ids: Sequence[str]) -> list[dict[str, Any]] | None:
        """What `resolve` would answer, from memory: None when any file is not held in memory
        as `owner`'s (then `resolve` decides). The records are shared: read-only."""

    def granted(self, file_ids: Sequence[str], readers: Sequence[str]) -> bool:
        """True when every file is known, in memory, to be granted to every one of `readers`
        already (then `grant` would store nothing)."""
