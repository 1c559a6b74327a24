"""One `Range: bytes=...` request (RFC 9110 14.1.2) against a file of `size` bytes."""

from __future__ import annotations


class Unsatisfiable(Exception):
    """The range lies outside the file: 416."""


def byte_range(header: bytes | None, size: int) -> tuple[int, int] | None:
    """(first, last) inclusive of a single range; None to serve the whole file (no header, a
    unit other than bytes, several ranges, or a header that does not parse: a server may
    ignore Range). Raises Unsatisfiable when no byte of the file is asked for."""
    if header is None:
        return None
    unit, _, spec = header.decode("latin-1").strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_s, dash, last_s = spec.strip().partition("-")
    if (
        not dash
        or not (first_s.isdigit() or first_s == "")
        or not (last_s.isdigit() or last_s == "")
    ):
        return None
    if first_s == "":
        if last_s == "":
            return None
        suffix = int(last_s)
        if suffix == 0 or size == 0:
            raise Unsatisfiable
        return max(size - suffix, 0), size - 1
    first = int(first_s)
    last = size - 1 if last_s == "" else min(int(last_s), size - 1)
    if last_s != "" and int(last_s) < first:
        return None
    if first >= size:
        raise Unsatisfiable
    return first, last
