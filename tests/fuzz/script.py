"""The byte format the fuzz harnesses read their inputs in, and its writer for the seeds.

A harness reads its input with a `Reader`: small integers, choices and length-prefixed chunks,
each a fixed number of bytes from the front. An exhausted input reads as zeros and empty
chunks, so every byte string is a valid input and a mutation changes only what it touches.
`Writer` is its exact inverse: the seed corpus is written with it from real frames, so a seed
means what it says to the harness that reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


class Reader:
    """Reads the fields of one fuzz input from the front."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def more(self) -> bool:
        return self.pos < len(self.data)

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        value = self.data[self.pos]
        self.pos += 1
        return value

    def u16(self) -> int:
        return (self.byte() << 8) | self.byte()

    def pick(self, options: Sequence[T]) -> T:
        """One of `options`, chosen by one byte."""
        return options[self.byte() % len(options)]

    def chunk(self) -> bytes:
        """A 2-byte big-endian length, then that many bytes (fewer at the input's end)."""
        n = self.u16()
        start = self.pos
        self.pos = min(len(self.data), start + n)
        return self.data[start : self.pos]

    def rest(self) -> bytes:
        start = self.pos
        self.pos = len(self.data)
        return self.data[start:]


class Writer:
    """Builds an input field by field, as Reader will read it back."""

    __slots__ = ("out",)

    def __init__(self) -> None:
        self.out = bytearray()

    def byte(self, value: int) -> Writer:
        self.out.append(value & 0xFF)
        return self

    def u16(self, value: int) -> Writer:
        self.out += value.to_bytes(2, "big")
        return self

    def pick(self, options: Sequence[T], value: T) -> Writer:
        return self.byte(options.index(value))

    def chunk(self, data: bytes) -> Writer:
        return self.u16(len(data)).raw(data)

    def raw(self, data: bytes) -> Writer:
        self.out += data
        return self

    def done(self) -> bytes:
        return bytes(self.out)
