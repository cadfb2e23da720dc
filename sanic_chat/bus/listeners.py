"""What both buses do with their local listeners."""

from __future__ import annotations

from collections.abc import Hashable
from typing import TypeVar

__all__ = ["remove_listener"]

K = TypeVar("K", bound=Hashable)
L = TypeVar("L")


def remove_listener(table: dict[K, list[L]], key: K, listener: L) -> bool:
    """Take ``listener`` off ``key``'s list (once, if it is there); True when that left
    ``key`` without listeners (its entry is then gone too)."""
    listeners = table.get(key)
    if listeners is None:
        return False
    try:
        listeners.remove(listener)
    except ValueError:
        return False
    if listeners:
        return False
    del table[key]
    return True
