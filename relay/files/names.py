"""A file name as the relay keeps it, and the Content-Disposition it is served with.

The name is only ever a label: the relay stores bytes under a random file id, never under a
client's name, so no name reaches the file system. Still, a name is cleaned before it is kept:
the last path component only (`../../etc/passwd` -> `passwd`), control characters and quotes
dropped, at most NAME_MAX characters, `file` when nothing is left.
"""

from __future__ import annotations

import unicodedata
from urllib.parse import quote

NAME_MAX = 255
_INLINE = ("image/png", "image/jpeg", "image/gif", "image/webp")


def clean_name(name: str | None) -> str:
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    kept = "".join(
        c for c in base if unicodedata.category(c)[0] != "C" and c not in "\"'`<>|:*?"
    ).strip(" .")
    return kept[:NAME_MAX] or "file"


def content_disposition(name: str, mime: str) -> bytes:
    """`inline` for the image types a chat shows, else `attachment`; the name both as an ASCII
    fallback and as RFC 8187 UTF-8 (`filename*`)."""
    kind = "inline" if mime in _INLINE else "attachment"
    ascii_name = (
        unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().replace("\\", "")
        or "file"
    )
    return (f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}").encode(
        "ascii"
    )
