"""A peewee-async database for a URL, on the store's own pools.

peewee-async takes a pool through its public extension point (a
``PoolBackend`` subclass as the database's ``pool_backend_cls``); both of ours
plug in there: :class:`~.sqlite_pool.SqlitePool` over aiosqlite, and
:class:`~.internals.PostgresPool` over aiopg connections. Building a database
does no I/O: the pool connects on first use, so a store opens while the
database is down and its first call raises ``Unavailable``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, cast

import peewee_async
from peewee_async.databases import AioDatabase
from peewee_async.pool import PoolBackend
from peewee_async.utils import ConnectionProtocol

from .internals import PostgresPool
from .sqlite_pool import SqlitePool
from .url import DatabaseUrl

__all__ = ["connect_database"]


class _Pool(Protocol):
    closed: bool

    async def acquire(self) -> Any: ...

    async def release(self, conn: Any, /) -> None: ...

    async def close(self) -> None: ...

    def has_acquired_connections(self) -> bool: ...


class _OwnPool(PoolBackend):
    """peewee-async's pool seam over one of our pools, made by ``make_pool``
    from the database's name and its ``pool_params``."""

    make_pool: ClassVar[Any]

    async def create(self) -> None:
        self.pool = type(self).make_pool(self.database, **self.connect_params)

    def _pool(self) -> _Pool:
        assert self.pool is not None, "pool is not created"
        return cast(_Pool, self.pool)

    async def acquire(self) -> ConnectionProtocol:
        if self.pool is None:
            await self.connect()
        conn: Any = await self._pool().acquire()
        return conn  # type: ignore[no-any-return]

    async def release(self, conn: ConnectionProtocol) -> None:
        await self._pool().release(conn)

    async def close(self) -> None:
        if self.pool is not None:
            await self._pool().close()

    def has_acquired_connections(self) -> bool:
        return self.pool is not None and self._pool().has_acquired_connections()


def _sqlite_pool(database: str, *, size: int, busy_timeout: float) -> SqlitePool:
    return SqlitePool(database, size=size, busy_timeout=busy_timeout)


def _postgres_pool(database: str, *, size: int, timeout: float, **connect: Any) -> PostgresPool:
    return PostgresPool(size=size, timeout=timeout, connect={"database": database, **connect})


class _SqlitePoolBackend(_OwnPool):
    required_modules = ["aiosqlite"]
    make_pool = staticmethod(_sqlite_pool)


class _PostgresPoolBackend(_OwnPool):
    required_modules = ["aiopg"]
    make_pool = staticmethod(_postgres_pool)


class _SqliteDatabase(peewee_async.SqliteDatabase):
    pool_backend_cls = _SqlitePoolBackend


class _PostgresqlDatabase(peewee_async.PostgresqlDatabase):
    pool_backend_cls = _PostgresPoolBackend


def connect_database(url: DatabaseUrl) -> AioDatabase:
    """Build the peewee-async database for ``url`` (no I/O)."""
    if url.backend == "sqlite":
        return _SqliteDatabase(
            url.database,
            returning_clause=True,
            pool_params={"size": url.connections, "busy_timeout": url.timeout},
        )
    connect: dict[str, Any] = {"host": url.host, "port": url.port, **url.extra}
    if url.user is not None:
        connect["user"] = url.user
    if url.password is not None:
        connect["password"] = url.password
    if url.schema is not None:
        connect["options"] = f"-c search_path={url.schema}"
    connect.setdefault("application_name", "sanic-chat")
    return _PostgresqlDatabase(
        url.database,
        **connect,
        # the timeout bounds connecting, waiting for a pooled connection, each statement
        pool_params={"size": url.connections, "timeout": url.timeout},
    )
