"""Records (NamedTuple instances without their Python __new__) and the collector's view."""

from __future__ import annotations

from typing import Any, TypeVar

T = TypeVar("T")


# --- the collector's view ---------------------------------------------------------------------


def untracked(obj: T) -> T:
    """`obj`, unchanged: the compiled module takes lists and tuples of atomic values out of the
    cyclic collector's sight (only the cost of full collections changes); Python cannot."""
    return obj


def untracked_json(obj: T) -> T:
    """`obj`, unchanged: the compiled module takes every container of a JSON value out of the
    cyclic collector's sight (only the cost of full collections changes); Python cannot."""
    return obj


# --- records --------------------------------------------------------------------------------------


def record(cls: type[T], items: tuple[Any, ...]) -> T:
    """An instance of the tuple subclass `cls` (a NamedTuple: MessageFrame, NewMessage,
    StoredMessage) holding `items`: cls(*items) without NamedTuple.__new__'s Python frame."""
    if not issubclass(cls, tuple):
        raise TypeError(f"record() needs a tuple subclass, not {cls!r}")
    return tuple.__new__(cls, items)
