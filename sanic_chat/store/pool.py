"""What the store's two connection pools share: a slot per connection, newest idle first.

At most ``size`` connections exist; an acquirer waits for a free slot (at most
``timeout``), then takes the newest idle connection or opens one in its own
slot, so nothing waits on anything but a slot. A connection handed back
unusable (mid-transaction, broken) or to a closed pool is closed rather than
kept, so no caller ever inherits another's half-done transaction. The pools
are :class:`~.sqlite_pool.SqlitePool` and :class:`~.internals.PostgresPool`.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

import peewee

__all__ = ["SlotPool"]

C = TypeVar("C")


class SlotPool(Generic[C]):
    """The slots and the bookkeeping; a pool says how to open, check, keep,
    take back and close its connections."""

    #: names the pool in "the ... pool is closed"
    kind = "database"

    def __init__(self, *, size: int, timeout: float | None) -> None:
        self._timeout = timeout
        self._slots = asyncio.Semaphore(size)
        self._used: set[C] = set()
        self.closed = False

    async def _open(self) -> C:
        raise NotImplementedError

    def _take_idle(self) -> C | None:
        """The newest idle connection still usable, or None."""
        raise NotImplementedError

    def _reusable(self, conn: C) -> bool:
        raise NotImplementedError

    def _keep(self, conn: C) -> None:
        """Make ``conn`` idle."""
        raise NotImplementedError

    async def _close(self, conn: C) -> None:
        raise NotImplementedError

    async def acquire(self) -> C:
        if self.closed:
            raise peewee.InterfaceError(f"the {self.kind} pool is closed")
        if self._timeout is None:  # no timer to arm and cancel (SQLite: every statement)
            await self._slots.acquire()
        else:
            async with asyncio.timeout(self._timeout):
                await self._slots.acquire()
        try:
            if self.closed:
                raise peewee.InterfaceError(f"the {self.kind} pool is closed")
            conn = self._take_idle()
            if conn is None:
                conn = await self._open()
        except BaseException:
            self._slots.release()
            raise
        self._used.add(conn)
        return conn

    async def release(self, conn: C) -> None:
        self._used.discard(conn)
        try:
            if self.closed or not self._reusable(conn):
                await self._close(conn)
            else:
                self._keep(conn)
        finally:
            self._slots.release()

    def has_acquired_connections(self) -> bool:
        return bool(self._used)
