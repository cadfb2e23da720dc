"""The SQLite pool: a few persistent aiosqlite connections, in place of peewee-async's.

A hand-built replacement of a library's job (architecture rule 7):

* Replaces: peewee-async's aiosqlite pool backend, which opens (and closes) a
  fresh connection -- a thread and the pragmas -- for every query, and runs
  each statement in four hops to aiosqlite's thread (open a cursor, execute,
  fetch, close). Ours keeps a few configured connections and runs a statement
  in one hop. No upstream issue was found for it.
* Justified by: ``python -m benchmarks.store_cost --backend sqlite`` (CPU per
  message cycle, which this pool serves); no before/after of the pool alone is
  recorded in ``benchmarks/RESULTS.md`` yet.
* Delete when: peewee-async keeps aiosqlite connections open across queries
  and runs a statement in one hop, and that benchmark shows no loss without it.

It uses aiosqlite's public API only; it plugs into peewee-async through
``database.py``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Any

import aiosqlite

from .pool import SlotPool

__all__ = ["SqliteConnection", "SqlitePool"]


class _SqliteCursor:
    """peewee-async's cursor protocol over aiosqlite, in ONE thread hop per
    statement (an aiosqlite cursor takes four: open, execute, fetch, close).

    The rows are fetched with the statement, so the statement is finished and
    reset in the worker thread, never left holding a read snapshot.
    """

    lastrowid = None  # the keys are UUIDs made by the store

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._rows: list[sqlite3.Row] = []
        self._next = 0
        self.rowcount = -1

    async def execute(self, sql: str, params: Any = ()) -> None:
        # Reading total_changes between hops is safe: the pool gives this
        # connection to one task at a time, and the worker is idle now.
        before = self._conn.total_changes
        self._rows = list(await self._conn.execute_fetchall(sql, params))
        self._next = 0
        # Counts rows an ON DELETE CASCADE removed too (only ever compared with 0).
        self.rowcount = self._conn.total_changes - before

    @property
    def description(self) -> list[tuple[str, None, None, None, None, None, None]] | None:
        if not self._rows:
            return None
        return [(name, None, None, None, None, None, None) for name in self._rows[0].keys()]

    async def fetchone(self) -> sqlite3.Row | None:
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    async def fetchmany(self, size: int) -> list[sqlite3.Row]:
        rows = self._rows[self._next : self._next + size]
        self._next += len(rows)
        return rows

    async def fetchall(self) -> list[sqlite3.Row]:
        rows = self._rows[self._next :]
        self._next = len(self._rows)
        return rows

    async def close(self) -> None:
        self._rows = []


class _CursorContext:
    """``async with connection.cursor()``, without a generator per statement."""

    __slots__ = ("_cursor",)

    def __init__(self, cursor: _SqliteCursor) -> None:
        self._cursor = cursor

    async def __aenter__(self) -> _SqliteCursor:
        return self._cursor

    async def __aexit__(self, *exc_info: object) -> None:
        return None


class SqliteConnection:
    """One pooled aiosqlite connection, as peewee-async expects a connection."""

    def __init__(self, raw: aiosqlite.Connection) -> None:
        self.raw = raw

    def cursor(self) -> _CursorContext:
        return _CursorContext(_SqliteCursor(self.raw))

    @property
    def in_transaction(self) -> bool:
        return self.raw.in_transaction

    async def close(self) -> None:
        await self.raw.close()


class SqlitePool(SlotPool[SqliteConnection]):
    """A few persistent aiosqlite connections, each configured once (``pool.py``:
    the slots). One handed back with a transaction still open (its ROLLBACK
    failed) is closed rather than reused."""

    kind = "SQLite"

    def __init__(self, path: str, *, size: int, busy_timeout: float) -> None:
        # an acquirer waits for a connection as long as it takes (the busy
        # timeout bounds what a writer then waits for another process)
        super().__init__(size=size, timeout=None)
        self._path = path
        self._busy_timeout = busy_timeout
        self._idle: list[SqliteConnection] = []

    async def _open(self) -> SqliteConnection:
        # Fail here, in a plain thread, when the file cannot be opened: aiosqlite's
        # own failed connect leaves its worker thread to report to an event loop
        # that may be closed by then. Connections are opened rarely (they persist).
        await asyncio.to_thread(self._prepare)
        # isolation_level=None: autocommit; the store issues BEGIN IMMEDIATE itself.
        conn = await aiosqlite.connect(
            self._path,
            isolation_level=None,
            timeout=self._busy_timeout,
            check_same_thread=False,
        )
        try:
            # WAL (set in _prepare): readers never block the writer; NORMAL: durable
            # against a process crash (an OS crash may lose the last commits).
            await conn.executescript(
                "PRAGMA synchronous=NORMAL;"
                "PRAGMA foreign_keys=ON;"
                f"PRAGMA busy_timeout={int(self._busy_timeout * 1000)};"
            )
        except BaseException:
            await conn.close()
            raise
        # named columns: the cursor adapter derives ``description`` from them
        conn.row_factory = sqlite3.Row
        return SqliteConnection(conn)

    def _prepare(self) -> None:
        """Open the file in a plain thread and switch it to WAL (a persistent mode).

        SQLite answers a journal-mode switch that races another connection with
        "database is locked" at once, without waiting out the busy timeout, so
        the switch is retried here until that timeout.
        """
        deadline = time.monotonic() + self._busy_timeout
        conn = sqlite3.connect(self._path, timeout=self._busy_timeout)
        try:
            while True:
                try:
                    conn.execute("PRAGMA journal_mode=WAL").fetchall()
                    return
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)
        finally:
            conn.close()

    def _take_idle(self) -> SqliteConnection | None:
        return self._idle.pop() if self._idle else None

    def _reusable(self, conn: SqliteConnection) -> bool:
        return not conn.in_transaction

    def _keep(self, conn: SqliteConnection) -> None:
        self._idle.append(conn)

    async def _close(self, conn: SqliteConnection) -> None:
        await conn.close()

    async def close(self) -> None:
        # Connections in use are closed when they come back (see release).
        self.closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()
