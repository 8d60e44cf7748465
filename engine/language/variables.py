"""The ``friend`` template variable, made once per friend (no dependencies: the store makes it
as it reads the friends of the due sends, :meth:`engine.runtime.store.Store.due_rows`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class FriendVars(dict):
    """A friend as templates see it (:func:`friend_vars` of the friend): passed for the friend
    itself, it is not made again."""

    __slots__ = ()


def friend_vars(friend: Mapping[str, Any]) -> FriendVars:
    """The ``friend`` template variable: attributes flattened in and kept under
    ``friend.attributes``; the friend's own fields (display_name, language, tags, ...) win over
    attributes of the same name; tags as a sorted list. A :class:`FriendVars` is returned as it is."""
    if type(friend) is FriendVars:
        return friend
    attributes = dict(friend.get("attributes") or {})
    out = FriendVars(attributes)
    out.update(friend)
    if "attributes" in friend and "attributes" not in attributes:
        del out["attributes"]  # set again below, after the friend's own fields (as it always was)
    out["attributes"] = attributes
    out["tags"] = sorted(friend.get("tags") or ())
    return out


def friend_vars_of(fields: Iterable[tuple[str, Any]], attributes: dict, tags: list[str]) -> FriendVars:
    """:func:`friend_vars` of the friend made of ``fields`` (its own fields, ``attributes``
    among them as stored: replaced by ``attributes``) and ``tags``, without making that friend
    first: the same keys in the same order, the same values."""
    out = FriendVars(attributes)
    out.update(fields)
    if "attributes" not in attributes:
        del out["attributes"]
    out["tags"] = sorted(tags)
    out["attributes"] = attributes
    return out
