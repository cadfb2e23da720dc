"""Where the store reaches below its libraries' public API -- the only such module.

Architecture rule 7: every hand-built replacement of a library's job heads its
file with the upstream issue it works around, the benchmark that justifies it
and when to delete it; private attributes of a library are touched here only.
``tests/store/test_internals.py`` fails when an installed aiopg, peewee or
peewee-async leaves the versions this was checked against (``CHECKED_AGAINST``;
``pyproject.toml`` pins the same ranges): re-read each piece below against the
new version, then widen the range.

1. :class:`PostgresPool` (on ``pool.py``'s slots, shared with the SQLite
   pool), in place of aiopg's pool (peewee-async's ``AioPgPoolBackend`` builds
   one with ``aiopg.create_pool``). aiopg's hands out idle connections
   oldest-first (a deque) and takes one lock for acquire and release, held
   while it opens a connection; on a saturated event loop each hand-off then
   waits a turn of the loop and the pool stops growing. Upstream: no issue
   found for either (the nearest, starvation in asyncpg's pool:
   https://github.com/MagicStack/asyncpg/issues/1247).
   Benchmark: ``python -m benchmarks.store_cost --backend postgres`` and the
   ``seed`` scenario at 300 chats; ``benchmarks/RESULTS.md``, "Second pass"
   (together with the one-statement post and batched checkpoints: post p50
   164-178 -> 17.5 ms, store CPU per message cycle 1.45-1.54 -> 1.13-1.27 ms).
   Tests: ``test_postgres_pool_*`` in ``tests/store/test_sql.py``.
   Delete when: aiopg's pool reuses newest-first without a lock across a
   connect, and those numbers hold with it.
2. :class:`_Connection` -- a failed connect (refused, no such database) leaves
   uvloop watching a closed descriptor, so the next connect given that number
   fails with "the handler is closed", and a half-made connection whose future
   nobody reads. Upstream: https://github.com/aio-libs/aiopg/issues/909 (fix
   proposed in https://github.com/aio-libs/aiopg/pull/926; also #856).
   Test: ``tests/store/test_postgres_failures.py``. Delete when: aiopg removes
   the writer and reader of a failed poll (that PR, released).
3. :class:`_Cursor` -- an aiopg cursor and its transaction helper refer to each
   other: a reference cycle per statement, for the cyclic collector whose full
   passes stopped the loop for 150-300 ms at 900 users (``RESULTS.md``, "Third
   pass": 24,774 -> 9,195 objects in cycles per 12 s at 600 users). Upstream:
   no issue found. Test: ``test_postgres_statements_leave_nothing_in_reference_cycles``.
   Delete when: aiopg's cursor drops the helper on close.
4. Peewee's DDL for a model (``Model._schema._create_table``,
   ``_create_indexes``) and an index's name (``ModelIndex._name``): peewee has
   no public way to get the ``CREATE`` text without executing it on a
   synchronous connection, which a peewee-async database does not have.
   Delete when: peewee offers one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from typing import Any

import aiopg
import peewee
import psycopg2.extensions

from .pool import SlotPool

__all__ = [
    "CHECKED_AGAINST",
    "PostgresPool",
    "create_statements",
    "relation_names",
]

#: package -> (lowest, first not checked) version whose internals the code below
#: was read against; ``pyproject.toml`` pins the same
CHECKED_AGAINST: dict[str, tuple[str, str]] = {
    "aiopg": ("1.4", "1.5"),
    "peewee": ("4.3", "4.4"),
    "peewee-async": ("2.1", "2.2"),
}


# --------------------------------------------------------------------------- peewee


def create_statements(
    database: peewee.Database, models: Iterable[type[peewee.Model]]
) -> list[tuple[str, tuple[Any, ...]]]:
    """The ``CREATE ... IF NOT EXISTS`` statements for ``models`` in ``database``'s dialect.

    Generated synchronously inside ``bind_ctx`` (no await in between), so the
    temporary binding of the shared models cannot leak into another store.
    """
    models = tuple(models)
    statements: list[tuple[str, tuple[Any, ...]]] = []
    with database.bind_ctx(models, bind_refs=False, bind_backrefs=False):
        for model in models:
            schema = model._schema  # type: ignore[attr-defined]
            sql, params = schema._create_table(safe=True).query()
            statements.append((sql, tuple(params)))
            for index in schema._create_indexes(safe=True):
                sql, params = index.query()
                statements.append((sql, tuple(params)))
    return statements


def relation_names(models: Iterable[type[peewee.Model]]) -> tuple[str, ...]:
    """Every table, then every index, that :func:`create_statements` creates."""
    models = tuple(models)
    return tuple(
        [model._meta.table_name for model in models]
        + [index._name for model in models for index in model._meta.fields_to_index()]
    )


# --------------------------------------------------------------------------- aiopg


class _Cursor(aiopg.Cursor):
    """aiopg's cursor, minus a reference cycle per statement.

    An aiopg ``Cursor`` and its ``Transaction`` refer to each other, so every
    statement left five objects that only the cyclic garbage collector could
    free. Under load those outlived the young collections and piled into the
    old generation, whose full collections stop the event loop for as long
    as they take (150-300 ms at 900 users). Closing the cursor ends its use
    (aiopg's context manager closes it after the statement), so it lets go
    of its transaction helper then, and the pair is freed at once."""

    def close(self) -> None:
        super().close()
        self._transaction = None  # type: ignore[assignment]


class _Connection(aiopg.Connection):
    """aiopg's connection, handing out :class:`_Cursor` (same arguments and
    behaviour as ``aiopg.Connection._cursor``), and failing to connect cleanly.

    A connect that fails (refused, no such database) fails inside libpq's poll,
    which closes the socket first. aiopg then forgets the descriptor but leaves
    the event loop watching it for writing; on uvloop that watcher, on a closed
    descriptor, ends up closed but still registered, so the next connection
    given the same descriptor number fails at once in ``__init__`` with
    "the handler is closed" -- leaving a half-made connection whose waiting
    future nobody reads ("Future exception was never retrieved", "Unclosed
    connection"). Both are cleaned up here: every retry then fails with the
    real cause, and succeeds once the server is back."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().__init__(*args, **kwargs)
        except BaseException:
            raw = getattr(self, "_conn", None)
            if raw is not None:
                raw.close()  # so __del__ finds nothing to warn about
            waiter = getattr(self, "_waiter", None)
            if waiter is not None and not waiter.done():
                waiter.cancel()  # nobody will await it; a cancelled future is not reported
            raise

    @staticmethod
    def _ready(weak_self: Any) -> None:
        self = weak_self()
        if self is None:
            return
        fileno, writing = self._fileno, self._writing
        aiopg.Connection._ready(weak_self)
        if fileno is not None and writing and self._fileno is None:
            # the poll failed with the descriptor gone: aiopg dropped its reader only
            with contextlib.suppress(OSError, RuntimeError, ValueError):
                self._loop.remove_writer(fileno)

    async def _cursor(
        self,
        name: str | None = None,
        cursor_factory: Any = None,
        scrollable: bool | None = None,
        withhold: bool = False,
        timeout: float | None = None,
        isolation_level: Any = None,
    ) -> aiopg.Cursor:
        impl = await self._cursor_impl(
            name=name, cursor_factory=cursor_factory, scrollable=scrollable, withhold=withhold
        )
        return _Cursor(
            self, impl, self._timeout if timeout is None else timeout, self._echo, isolation_level
        )


async def _open_connection(timeout: float, connect: dict[str, Any]) -> aiopg.Connection:
    """What ``aiopg.connect(timeout=..., **connect)`` does, with :class:`_Connection`
    (``connect`` holds keyword parameters, never a DSN: see connect_database)."""
    connection: aiopg.Connection = await _Connection(None, timeout, **connect)
    return connection


class PostgresPool(SlotPool[aiopg.Connection]):
    """A few aiopg connections, the one used last handed out first (``pool.py``:
    the slots; an acquirer waits at most ``timeout`` for one). A connection
    handed back closed, broken or mid-transaction is closed rather than
    reused, and one left idle for ``idle_timeout`` is closed too (a server,
    proxy or NAT may drop it silently meanwhile). This replaces aiopg's pool,
    for two costs measured under load (item 1 of the header):

    * aiopg hands its idle connections out oldest-first: with ten open, even
      one task's statements each go to another backend, which here cost about
      0.1 ms of our CPU and 0.2 ms of latency per statement. Newest-first
      keeps a quiet store on one connection.
    * aiopg's acquire and release each take one lock, which it also holds
      while it opens a connection. On a saturated event loop the tasks queued
      on that lock stay queued -- every hand-off waits a turn of the loop --
      and the pool stops growing, capped at a hand-off per turn. Here nothing
      waits but for a slot, and a connection is opened in the slot it is for.
    """

    kind = "PostgreSQL"

    def __init__(
        self,
        *,
        size: int,
        timeout: float,
        connect: dict[str, Any],
        idle_timeout: float = 120.0,
    ) -> None:
        super().__init__(size=size, timeout=timeout)
        self._connect = connect
        self._idle_timeout = idle_timeout
        #: (when it was handed back, connection), oldest first
        self._idle: list[tuple[float, aiopg.Connection]] = []

    async def _open(self) -> aiopg.Connection:
        assert self._timeout is not None
        return await _open_connection(self._timeout, self._connect)

    def _take_idle(self) -> aiopg.Connection | None:
        self._close_stale()
        while self._idle:
            _, conn = self._idle.pop()
            if not conn.closed:
                return conn
        return None

    def _reusable(self, conn: aiopg.Connection) -> bool:
        return not conn.closed and (
            conn.raw.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE
        )

    def _keep(self, conn: aiopg.Connection) -> None:
        self._idle.append((time.monotonic(), conn))
        self._close_stale()

    async def _close(self, conn: aiopg.Connection) -> None:
        conn.close()

    def _close_stale(self) -> None:
        stale_before = time.monotonic() - self._idle_timeout
        while self._idle and self._idle[0][0] < stale_before:
            _, conn = self._idle.pop(0)
            conn.close()

    async def close(self) -> None:
        """Close every connection, idle or in use (a statement in flight fails)."""
        self.closed = True
        idle, self._idle = self._idle, []
        for conn in [*(conn for _, conn in idle), *self._used]:
            conn.close()
