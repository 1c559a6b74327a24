"""The HTTP API's keys: from `api_keys` (comma-separated) and `api_keys_file` (one per line).

Invariants:
- a key is compared in constant time: the presented value and every configured key are
  hashed (SHA-256, so lengths leak nothing) and compared with hmac.compare_digest, all of
  them, whatever matched;
- the file is re-read when its modification time or size changes (checked at most once a
  second), so a key can be added or revoked without a restart; a file that cannot be read
  then keeps the keys last read (logged); at startup it is a ConfigError;
- keys are never logged or shown.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable

from attrs import define, field

from relay.config import RelayConfig
from relay.errors import ConfigError

log = logging.getLogger("relay.api")

#: How often (s) the key file's stat is looked at, at most.
RECHECK_INTERVAL = 1.0


def enabled(config: RelayConfig) -> bool:
    """Whether the config asks for the HTTP API (some key source is set)."""
    return config.api_keys is not None or config.api_keys_file is not None


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def parse_keys(text: str, *, sep: str) -> list[str]:
    """The keys of a list: split on `sep`, stripped; blanks and `#` comment lines dropped."""
    keys = []
    for part in text.split(sep):
        key = part.strip()
        if key and not key.startswith("#"):
            keys.append(key)
    return keys


@define(eq=False)
class ApiKeys:
    """The configured keys; `check(presented)` says whether one matches."""

    inline: list[bytes]
    path: str | None
    clock: Callable[[], float] = time.monotonic
    _from_file: list[bytes] = field(factory=list)
    _stamp: tuple[int, int] | None = None
    _checked: float = -1e18

    @classmethod
    def from_config(cls, config: RelayConfig) -> ApiKeys:
        """Read the keys now; ConfigError when the file cannot be read or no key is left."""
        inline = [_digest(k) for k in parse_keys(config.api_keys or "", sep=",")]
        keys = cls(inline, config.api_keys_file)
        if keys.path is not None:
            try:
                keys._load()
            except OSError as exc:
                raise ConfigError(f"api_keys_file: cannot read it ({exc.strerror})") from None
        if not keys.inline and not keys._from_file:
            raise ConfigError("the HTTP API is configured without a single key")
        return keys

    def _load(self) -> None:
        assert self.path is not None
        st = os.stat(self.path)
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        with open(self.path, encoding="utf-8") as f:
            text = f.read()
        self._from_file = [_digest(k) for k in parse_keys(text, sep="\n")]
        self._stamp = stamp

    def _refresh(self) -> None:
        now = self.clock()
        if self.path is None or now - self._checked < RECHECK_INTERVAL:
            return
        self._checked = now
        try:
            self._load()
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("api_keys_file: cannot re-read it (%s); keeping the keys last read", exc)

    def check(self, presented: str) -> bool:
        """Whether `presented` is one of the keys (constant time in which one, if any)."""
        self._refresh()
        digest = _digest(presented)
        found = False
        for key in (*self.inline, *self._from_file):
            found |= hmac.compare_digest(digest, key)
        return found
