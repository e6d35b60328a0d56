"""Bounded memo of pure datatype conversions (issue #14: a site repeats a few hundred doctors,
locations, codes and facilities in message after message).

A conversion memoized here is a pure function of its inputs: the repetition's components
(:meth:`gateway.hl7v2.tokenizer.Rep.key`) and plain arguments (site, default system), plus, for the
conversions that read the identifier systems, that very ``IdentifierSystems`` object (compared by
identity: another configuration never reuses an entry). The result is kept serialized
(``marshal``), so every hit is a fresh deep copy: a caller that mutates its result (adds an
extension, links a reference) cannot leak that into the next message.
"""

from __future__ import annotations

import marshal
from collections.abc import Callable, Hashable
from typing import Any

MEMO_MAX = 4096


class Memo:
    """Key -> serialized result, at most ``max_entries`` (cleared when full: a site's working set
    is far smaller; a flood of distinct values only costs the conversions)."""

    __slots__ = ("_entries", "_max")

    def __init__(self, max_entries: int = MEMO_MAX) -> None:
        self._entries: dict[Hashable, tuple[object, bytes]] = {}
        self._max = max_entries

    def get(self, key: Hashable, owner: object = None) -> bytes | None:
        """The stored result of ``key`` (pass it to :func:`load`), None on a miss. ``owner``: an
        input compared by identity (the IdentifierSystems), None when the conversion has none."""
        entry = self._entries.get(key)
        if entry is None or entry[0] is not owner:
            return None
        return entry[1]

    def put(self, key: Hashable, result: Any, owner: object = None) -> Any:
        """Remember ``result`` (JSON: dict, list, str, int, float, bool, None) and return it."""
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[key] = (owner, marshal.dumps(result))
        return result

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def load(blob: bytes) -> Any:
    """A fresh deep copy of a stored result."""
    return marshal.loads(blob)  # noqa: S302 -- only bytes this module wrote (Memo.put), never input


def cached(memo: Memo, key: Hashable, convert: Callable[[], Any], owner: object = None) -> Any:
    """``convert()`` remembered in ``memo`` under ``key`` (and ``owner``): a fresh copy on every hit."""
    blob = memo.get(key, owner)
    if blob is not None:
        return load(blob)
    return memo.put(key, convert(), owner)
