"""permessage-deflate (RFC 7692): the negotiation, the shared encoder, one connection's inflater.

Sans-IO: no sockets, no trio. `negotiate` reads the client's `Sec-WebSocket-Extensions` offers
and picks the first one the relay can honour; `FrameDeflater` compresses encoded server frames
and is shared by every connection of a server that compresses with the same window;
`Inflater` decompresses one connection's compressed messages.

Invariants:
- The relay always answers `server_no_context_takeover`: every compressed frame is
  decodable alone, so the same compressed bytes are right for every recipient that
  negotiated the same window. A frame is compressed once per payload, never per recipient:
  `FrameDeflater` remembers the last frame it was handed (by identity; the core encodes a
  delivery once and hands the same bytes object to every recipient) and its answer.
- Only data frames whose payload has at least `min_bytes` bytes are compressed, and only
  when compression makes the frame smaller; control frames never are.
- An inflated message never exceeds the limit it is given (the parser's current
  `max_message_bytes`): decompression stops one byte past it (a decompression bomb costs at
  most that much memory) and the connection is failed with 1009.
- A connection holds no zlib state until its peer sends a compressed message, and none at
  all when `client_no_context_takeover` was negotiated (each message gets a fresh inflater).
"""

from __future__ import annotations

import re
import struct
import zlib

from attrs import define, field, frozen

from relay.errors import RelayError
from relay.metrics import Stats

EXTENSION = "permessage-deflate"
#: The window (log2 bytes) the relay asks a client to compress with when the client offers
#: `client_max_window_bits`. Each connection that sends compressed messages with context
#: takeover keeps one inflater: 40 KiB with a 2^15 window, 11 KiB with 2^12, 7.7 KiB with
#: 2^9 (tracemalloc); client frames are small JSON, so 4 KiB of history costs little ratio.
INBOUND_WINDOW_BITS = 12
#: zlib level of the relay's compression. A 50-message, 15 KB history page of varied short
#: texts: level 1 makes 2.2 KB in 137 µs, level 6 1.9 KB in 199 µs; of repeated texts both
#: make 0.65 KB, level 1 in half the time. The relay's CPU is the scarcer resource.
LEVEL = 1
#: What RFC 7692 7.2.1 has the compressor leave off each message's end (and the inflater
#: add back).
_TAIL = b"\x00\x00\xff\xff"
_WINDOW_BITS = re.compile(r"[89]|1[0-5]")  # RFC 7692 7.1.2: 8-15, no leading zeros
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_H16 = struct.Struct("!BBH")
_H64 = struct.Struct("!BBQ")

# The four parameters of RFC 7692 7.1 and whether each takes a value: False none, True one,
# None optional.
_PARAMETERS: dict[str, bool | None] = {
    "server_no_context_takeover": False,
    "client_no_context_takeover": False,
    "server_max_window_bits": True,
    "client_max_window_bits": None,
}


@frozen
class DeflateParams:
    """What was agreed with one client: the response's parameters and what follows from them.

    `server_window_bits`: the window the relay compresses with (15 unless the client limited
    it). `client_window_bits`: the largest window the client may compress with (ours when
    it offered `client_max_window_bits`, else 15). The relay always answers
    server_no_context_takeover."""

    server_window_bits: int = 15
    client_window_bits: int = 15
    client_no_context_takeover: bool = False
    #: what the response names (the RFC lets a parameter appear only when offered)
    answer_server_bits: bool = False
    answer_client_bits: bool = False

    def header_value(self) -> bytes:
        """The `Sec-WebSocket-Extensions` value of the response."""
        parts = [EXTENSION, "server_no_context_takeover"]
        if self.answer_server_bits:
            parts.append(f"server_max_window_bits={self.server_window_bits}")
        if self.client_no_context_takeover:
            parts.append("client_no_context_takeover")
        if self.answer_client_bits:
            parts.append(f"client_max_window_bits={self.client_window_bits}")
        return "; ".join(parts).encode("ascii")


def parse_offers(values: list[bytes]) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """The extension offers of the `Sec-WebSocket-Extensions` header values, in order:
    (name, [(parameter, value or None)]) with names lower-cased and quoted values unquoted.
    A malformed element is left out (which declines it); the rest are still read."""
    offers: list[tuple[str, list[tuple[str, str | None]]]] = []
    for value in values:
        for element in _split(value.decode("latin-1"), ","):
            parsed = _parse_element(element)
            if parsed is not None:
                offers.append(parsed)
    return offers


def _split(text: str, sep: str) -> list[str]:
    """`text` cut at each `sep` outside a quoted-string."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


def _parse_element(element: str) -> tuple[str, list[tuple[str, str | None]]] | None:
    items = [item.strip() for item in _split(element, ";")]
    name = items[0]
    if not name:
        return None  # an empty list element (RFC 7230 7: "a, , b"), or no name
    if not _TOKEN.fullmatch(name):
        return None
    params: list[tuple[str, str | None]] = []
    for item in items[1:]:
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not _TOKEN.fullmatch(key):
            return None
        if not eq:
            params.append((key.lower(), None))
            continue
        raw = raw.strip()
        if len(raw) >= 2 and raw[0] == '"' and raw[-1] == '"':
            value = re.sub(r"\\(.)", r"\1", raw[1:-1])
        elif _TOKEN.fullmatch(raw):
            value = raw
        else:
            return None
        params.append((key.lower(), value))
    return name.lower(), params


def negotiate(values: list[bytes]) -> DeflateParams | None:
    """The agreement for the first permessage-deflate offer the relay can honour in the
    client's `Sec-WebSocket-Extensions` header values; None: no such offer (no extension).

    An offer is declined (RFC 7692 5, 7.1) when a parameter is unknown, repeated, has a value
    where none is allowed or lacks a required one, or a window size is not 8-15 without
    leading zeros; also when it limits the relay's window to 8 (zlib cannot compress raw
    deflate with a 256-byte window)."""
    for name, params in parse_offers(values):
        if name == EXTENSION:
            agreed = _accept(params)
            if agreed is not None:
                return agreed
    return None


def _accept(params: list[tuple[str, str | None]]) -> DeflateParams | None:
    seen: dict[str, str | None] = {}
    for key, value in params:
        if key not in _PARAMETERS or key in seen:
            return None
        takes = _PARAMETERS[key]
        if (takes is False and value is not None) or (takes is True and value is None):
            return None
        if value is not None and not _WINDOW_BITS.fullmatch(value):
            return None
        seen[key] = value
    server_bits = 15
    if "server_max_window_bits" in seen:
        server_bits = int(seen["server_max_window_bits"] or 15)
        if server_bits < 9:
            return None
    client_bits = 15
    answer_client = "client_max_window_bits" in seen
    if answer_client:
        client_bits = min(int(seen["client_max_window_bits"] or 15), INBOUND_WINDOW_BITS)
    return DeflateParams(
        server_window_bits=server_bits,
        client_window_bits=client_bits,
        client_no_context_takeover="client_no_context_takeover" in seen,
        answer_server_bits="server_max_window_bits" in seen,
        answer_client_bits=answer_client,
    )


# --- output -------------------------------------------------------------------------------------


@define(eq=False)
class FrameDeflater:
    """Compresses encoded server frames (RSV1 set) for every connection of a server that
    negotiated `window_bits`; remembers its last answer (see the module's invariants).

    `stats.frames_compressed` counts the frames it compressed (each once, however many
    recipients)."""

    min_bytes: int
    stats: Stats
    window_bits: int = 15
    _last_in: bytes | None = field(default=None, init=False)
    _last_out: bytes = field(default=b"", init=False)

    def frame(self, frame: bytes) -> bytes:
        """`frame` (one unmasked FIN server frame as relay.fastpath.encode_frame makes it)
        compressed, or `frame` itself when it is a control frame, its payload is under
        `min_bytes`, or compression would not make it smaller."""
        if frame is self._last_in:
            return self._last_out
        out = self._deflate(frame)
        self._last_in = frame
        self._last_out = out
        return out

    def _deflate(self, frame: bytes) -> bytes:
        b0 = frame[0]
        if b0 & 0x08:  # opcodes 8-15: control frames are never compressed (RFC 7692 6.1)
            return frame
        n = frame[1] & 0x7F
        head = 2 if n < 126 else (4 if n == 126 else 10)
        if len(frame) - head < self.min_bytes:
            return frame
        # A fresh compressor per payload: nothing of an earlier message is referenced
        # (server_no_context_takeover), and no zlib state is kept between frames.
        z = zlib.compressobj(LEVEL, zlib.DEFLATED, -self.window_bits)
        body = z.compress(memoryview(frame)[head:]) + z.flush(zlib.Z_SYNC_FLUSH)
        if body.endswith(_TAIL):
            body = body[:-4]
        size = len(body)
        if size + _header_len(size) >= len(frame):
            return frame
        self.stats.frames_compressed += 1
        first = b0 | 0x40  # RSV1: "this message is compressed"
        if size < 126:
            return bytes((first, size)) + body
        if size < 65536:
            return _H16.pack(first, 126, size) + body
        return _H64.pack(first, 127, size) + body


def _header_len(n: int) -> int:
    return 2 if n < 126 else (4 if n < 65536 else 10)


@define(eq=False)
class Deflaters:
    """A server's FrameDeflaters, one per window size its clients negotiated (almost always
    one: 15), so that connections sharing a window share the compressed frames."""

    min_bytes: int
    stats: Stats
    _by_window: dict[int, FrameDeflater] = field(factory=dict, init=False)

    def for_params(self, params: DeflateParams) -> tuple[FrameDeflater, Inflater]:
        """The shared deflater and a new inflater of a connection that agreed `params`."""
        bits = params.server_window_bits
        deflater = self._by_window.get(bits)
        if deflater is None:
            deflater = self._by_window[bits] = FrameDeflater(self.min_bytes, self.stats, bits)
        return deflater, Inflater(params.client_window_bits, params.client_no_context_takeover)


# --- input --------------------------------------------------------------------------------------


class InflateError(RelayError):
    """A compressed message cannot be taken: `code` is the close code (1007 corrupt data,
    1009 over the limit), `reason` the close reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


R_INFLATE_TOO_BIG = "inflated message over max_message_bytes"
R_INFLATE_CORRUPT = "compressed message does not inflate"


@define(eq=False, slots=True)
class Inflater:
    """Decompresses one connection's compressed messages (client-to-relay direction)."""

    window_bits: int = 15
    no_context_takeover: bool = False
    _z: zlib._Decompress | None = None

    def inflate(self, payload: bytes, limit: int) -> bytes:
        """The message `payload` compressed; InflateError when it is corrupt or inflates to
        more than `limit` bytes (found after at most `limit + 1` bytes were made)."""
        z = self._z
        if z is None:
            # zlib's inflater takes any window at least the compressor's; 9 for 8, which
            # zlib's own compressor turns into 9 for raw deflate.
            z = zlib.decompressobj(-max(self.window_bits, 9))
            if not self.no_context_takeover:
                self._z = z
        try:
            out = z.decompress(payload + _TAIL, limit + 1)
        except zlib.error:
            self._z = None
            raise InflateError(1007, R_INFLATE_CORRUPT) from None
        if len(out) > limit:
            self._z = None
            raise InflateError(1009, R_INFLATE_TOO_BIG)
        if z.eof:
            # The message ended with a final block (RFC 7692 7.2.3.3 allows it): the next one
            # starts a new stream.
            self._z = None
        return out

    @property
    def holds_state(self) -> bool:
        """Whether zlib state is kept between messages (memory per connection)."""
        return self._z is not None
