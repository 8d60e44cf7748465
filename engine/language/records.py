"""Equality, hashing and ``repr`` of the syntax tree's and the IR's dataclasses, written once.

``dataclasses`` writes and compiles ``__eq__``, ``__hash__`` and ``__repr__`` anew for every
class it decorates (a few tenths of a millisecond each): for the hundred node classes of
:mod:`engine.language.astnodes` and :mod:`engine.language.ir` that was a large part of
``linerules validate``'s start-up. Their classes are declared
``@dataclass(..., eq=False, repr=False)`` on
:class:`Record` or :class:`FrozenRecord` and get these methods instead, with the same results
as the generated ones: equality (same class, then the tuple of the ``compare`` fields in
order), hash (of the tuple of the hashed fields, frozen records only; a mutable record is
unhashable, as an ``eq=True`` dataclass is) and ``repr`` (``Name(field=value, ...)`` over the
``repr`` fields: rule versions are hashes of it, so it must not change).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import FrozenInstanceError, fields
from operator import attrgetter
from typing import Any

_EQ: dict[type, Callable[[Any], tuple]] = {}
_HASH: dict[type, Callable[[Any], tuple]] = {}
_REPR: dict[type, tuple[str, Callable[[Any], tuple]]] = {}


def _getter(names: list[str], tuples: bool = True) -> Callable[[Any], Any]:
    """The fields ``names`` of an object as a tuple; with ``tuples=False`` a single field's
    value itself (enough for equality and hashing, one call less)."""
    if not names:
        return lambda _obj: ()
    if len(names) == 1 and tuples:
        one = attrgetter(names[0])
        return lambda obj: (one(obj),)
    return attrgetter(*names)


def _eq_key(cls: type) -> Callable[[Any], Any]:
    key = _EQ.get(cls)
    if key is None:
        key = _EQ[cls] = _getter([f.name for f in fields(cls) if f.compare], tuples=False)
    return key


class Record:
    """Base of a mutable dataclass declared with ``eq=False, repr=False``."""

    __slots__ = ()
    __hash__ = None  # type: ignore[assignment]

    def __eq__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            key = _eq_key(self.__class__)
            mine, theirs = key(self), key(other)
            return mine is theirs or mine == theirs  # as a tuple compares its items
        return NotImplemented

    def __repr__(self) -> str:
        shown = _REPR.get(self.__class__)
        if shown is None:
            cls = self.__class__
            names = [f.name for f in fields(cls) if f.repr]
            text = f"{cls.__qualname__}({', '.join(f'{n}=%r' for n in names)})"  # names hold no %
            shown = _REPR[cls] = (text, _getter(names))
        return shown[0] % shown[1](self)


class FrozenRecord(Record):
    """Base of a dataclass declared with ``eq=False, repr=False`` (and not ``frozen``, whose
    two generated methods per class cost as much again): hashable, and its fields cannot be
    assigned again or deleted once ``__init__`` set them (``FrozenInstanceError``, as from a
    frozen dataclass)."""

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        # Straight into the instance's dict (a frozen record has no slots or field
        # descriptors): half the cost of ``object.__setattr__``, paid for every field of every
        # record a load compiles.
        fields_set = self.__dict__
        if name in fields_set:
            raise FrozenInstanceError(f"cannot assign to field {name!r}")
        fields_set[name] = value

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __hash__(self) -> int:
        cls = self.__class__
        key = _HASH.get(cls)
        if key is None:
            key = _HASH[cls] = _getter(
                [f.name for f in fields(cls) if (f.compare if f.hash is None else f.hash)], tuples=False
            )
        return hash(key(self))
