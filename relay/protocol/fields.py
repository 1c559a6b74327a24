"""Typed reading of one client frame's fields: the one place a field's type and bounds become
an `invalid` error naming the field (parse.py and the v2 frame modules, calls.py and keys.py,
read their frames through it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from relay.errors import FrameError
from relay.protocol.limits import IDENT_MAX


class Fields:
    """Typed access to the fields of one client frame; every failure is `invalid` with `field`."""

    __slots__ = ("obj", "ref")

    def __init__(self, obj: Mapping[str, Any], ref: str | None) -> None:
        self.obj = obj
        self.ref = ref

    def fail(self, name: str, why: str) -> FrameError:
        return FrameError("invalid", f"{name}: {why}", ref=self.ref, field=name)

    def string(
        self, name: str, *, required: bool = False, max_len: int = IDENT_MAX, min_len: int = 1
    ) -> str | None:
        value = self.obj.get(name)
        if value is None:
            if required:
                raise self.fail(name, "is required")
            return None
        if not isinstance(value, str):
            raise self.fail(name, "must be a string")
        if not min_len <= len(value) <= max_len:
            raise self.fail(name, f"must be {min_len}-{max_len} characters")
        return value

    def required_string(self, name: str, *, max_len: int = IDENT_MAX) -> str:
        value = self.string(name, required=True, max_len=max_len)
        assert value is not None
        return value

    def integer(self, name: str, *, low: int, high: int, default: int | None = None) -> int | None:
        value = self.obj.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(name, "must be an integer")
        if not low <= value <= high:
            raise self.fail(name, f"must be {low}-{high}")
        return value

    def choice(self, name: str, options: Sequence[str], *, default: str | None = None) -> str:
        value = self.obj.get(name, default)
        if value is None:
            raise self.fail(name, "is required")
        if value not in options:
            raise self.fail(name, f"must be one of {', '.join(options)}")
        return str(value)

    def id_list(self, name: str, *, max_items: int) -> tuple[str, ...]:
        value = self.obj.get(name)
        if not isinstance(value, list):
            raise self.fail(name, "must be a list of ids")
        if len(value) > max_items:
            raise self.fail(name, f"names at most {max_items} ids")
        ids: dict[str, None] = {}
        for item in value:
            if not isinstance(item, str) or not 1 <= len(item) <= IDENT_MAX:
                raise self.fail(name, f"must hold strings of 1-{IDENT_MAX} characters")
            ids[item] = None
        return tuple(ids)

    def one_of(self, peer_field: str) -> tuple[str | None, str | None]:
        """Exactly one of `peer_field` (peerId/recipientId) and `groupId`."""
        peer = self.string(peer_field)
        group = self.string("groupId")
        if (peer is None) == (group is None):
            raise self.fail(
                peer_field if peer is None else "groupId",
                f"exactly one of {peer_field} and groupId is required",
            )
        return peer, group
