"""Persistence: the :class:`~sanic_chat.core.ports.MessageStore` implementations.

Import-light on purpose: importing this package (or ``.memory``) never imports
peewee, so the core's tests run without a database driver. :func:`open_store`
imports the SQL store only when it is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .memory import MemoryMessageStore

if TYPE_CHECKING:
    from .sql import SqlMessageStore

__all__ = ["MemoryMessageStore", "open_store"]


async def open_store(url: str, *, schema: str | None = None) -> SqlMessageStore:
    """Open the SQL store at ``url`` (see :func:`sanic_chat.store.sql.open_store`)."""
    from .sql import open_store as _open_store

    return await _open_store(url, schema=schema)
