"""Looking at untrusted input without being swamped by it.

YAML aliases let a few hundred bytes describe a tree of a billion values (``&a [..]``,
``[*a, *a, ...]``, nested): the parsed object shares its subtrees, but anything that walks it
(validation, an error message's repr) pays for the expansion. :func:`expanded_size` counts the
expanded tree without expanding it, and :func:`short_repr` echoes a value in bounded space.
"""

from __future__ import annotations

import reprlib
from typing import Any

ECHO_CHARS = 80


def expanded_size(tree: Any, limit: int) -> int | None:
    """The number of values (mappings, lists and scalars) in ``tree`` with every shared subtree
    counted each time it appears, or None when that passes ``limit`` or the tree contains itself.

    Each distinct container is visited once (sizes memoized by identity), so the cost is linear
    in the parsed document, not in its expansion.
    """
    sizes: dict[int, int | None] = {}

    def size(node: Any) -> int | None:
        if not isinstance(node, (dict, list)):
            return 1
        key = id(node)
        if key in sizes:
            return sizes[key]  # None while in progress: a cycle
        sizes[key] = None
        children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
        total = 1
        for child in children:
            child_size = size(child)
            if child_size is None or total + child_size > limit:
                return None
            total += child_size
        sizes[key] = total
        return total

    return size(tree)


def short_repr(value: Any, limit: int = ECHO_CHARS) -> str:
    """``repr(value)`` cut to about ``limit`` characters, in time bounded by ``limit`` too."""
    shortener = reprlib.Repr()
    shortener.maxlevel, shortener.maxlist, shortener.maxdict = 2, 4, 4
    shortener.maxstring, shortener.maxother, shortener.maxlong = limit, limit, limit
    text = shortener.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
