"""A file's content type from its first bytes (at most SNIFF_BYTES), for the types a chat shows
or a browser could misread. The relay says a type it recognises whatever the client claimed;
otherwise the client's type when it is a well-formed `type/subtype` that is not one a browser
would run (HTML, SVG, XML, JavaScript), else `application/octet-stream`.
"""

from __future__ import annotations

import re

SNIFF_BYTES = 512
OCTET_STREAM = "application/octet-stream"

_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"%PDF-", 0, "application/pdf"),
    (b"PK\x03\x04", 0, "application/zip"),
    (b"OggS", 0, "audio/ogg"),
    (b"ID3", 0, "audio/mpeg"),
    (b"\x1aE\xdf\xa3", 0, "video/webm"),
)
_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,63}$")
#: types a browser renders as active content: never served as such
_ACTIVE = ("html", "svg", "xml", "javascript", "ecmascript", "xhtml")


def sniff(head: bytes) -> str | None:
    """The type the bytes say, or None when they say none the relay knows."""
    for magic, offset, mime in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return mime
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[4:8] == b"ftyp":
        return "video/mp4"
    return None


def content_type(head: bytes, claimed: str | None) -> str:
    """The type a file is stored and served with (see the module docstring)."""
    found = sniff(head)
    if found is not None:
        return found
    if claimed is not None:
        mime = claimed.split(";", 1)[0].strip().lower()
        if _TYPE.match(mime) and not any(word in mime for word in _ACTIVE):
            return mime
    return OCTET_STREAM
