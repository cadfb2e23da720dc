"""Database URLs: what the store accepts, parsed and checked before anything connects.

* ``sqlite:////abs/path/chat.db``, ``sqlite:///relative/chat.db`` (from the
  working directory; SQLAlchemy's convention) or ``sqlite:///:memory:``.
* ``postgresql://user:pass@host:port/db`` (or ``postgres://``). ``?schema=NAME``
  puts every table in that schema (via the connection's ``search_path``;
  ``migrate`` creates it), which is how tests keep to themselves on a shared
  database.

Optional query parameters on either: ``pool_size=N`` and ``timeout=SECONDS``
(default 5). On PostgreSQL the timeout bounds connecting, waiting for a pooled
connection and each statement; on SQLite it is the busy timeout, how long a
writer waits for another process's write lock. Other PostgreSQL parameters
(``sslmode``, ``application_name``) pass through to libpq.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = ["ACCEPTED_URLS", "DatabaseUrl", "parse_url"]

ACCEPTED_URLS = (
    "sqlite:////absolute/path/chat.db, sqlite:///relative/path/chat.db, sqlite:///:memory:, or "
    "postgresql://user:password@host:port/database (postgres:// also accepted); "
    "optional query parameters: schema=NAME (PostgreSQL), pool_size=N, timeout=SECONDS"
)

_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


@dataclass(frozen=True, slots=True)
class DatabaseUrl:
    backend: Literal["sqlite", "postgresql"]
    #: SQLite: the file path (or ``:memory:``); PostgreSQL: the database name
    database: str
    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: str | None = None
    schema: str | None = None
    pool_size: int | None = None
    timeout: float = 5.0
    #: further libpq parameters (``sslmode=...``), passed through
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def in_memory(self) -> bool:
        return self.backend == "sqlite" and self.database == ":memory:"

    @property
    def where(self) -> str | None:
        """The server, as failures name it (PostgreSQL: ``host:port``)."""
        return f"{self.host}:{self.port}" if self.backend == "postgresql" else None

    @property
    def connections(self) -> int:
        """The pool's size. One for ``:memory:``: each connection would be its own database."""
        if self.in_memory:
            return 1
        # PostgreSQL: under load each statement also waits out the event loop's
        # turn, so a connection is held longer than the query takes; with 10 the
        # pool itself became the queue at ~1,000 users (benchmarks/RESULTS.md).
        # Connections are opened only as needed.
        return self.pool_size or (4 if self.backend == "sqlite" else 32)


def _bad(url: str, why: str) -> ValueError:
    shown = re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)  # never echo a password
    return ValueError(f"bad database URL {shown!r}: {why}; expected {ACCEPTED_URLS}")


def parse_url(url: str, *, schema: str | None = None) -> DatabaseUrl:
    """Parse a database URL, or raise :class:`ValueError` naming the accepted forms."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _bad(url, str(exc)) from None
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    try:
        pool_size = int(query.pop("pool_size")) if "pool_size" in query else None
        timeout = float(query.pop("timeout")) if "timeout" in query else 5.0
    except ValueError:
        raise _bad(url, "pool_size must be an integer and timeout a number") from None
    if (pool_size is not None and pool_size < 1) or timeout <= 0:
        raise _bad(url, "pool_size and timeout must be positive")
    url_schema = query.pop("schema", None)
    schema = schema or url_schema or None

    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        if parts.netloc or not parts.path or parts.path.endswith("/"):
            raise _bad(url, "an SQLite URL has three slashes and then a file's path")
        if query or schema:
            raise _bad(url, "SQLite takes only pool_size and timeout")
        # after the third slash comes the file name, as in SQLAlchemy: an absolute
        # path makes four slashes, a relative one is taken from the working
        # directory, now (a worker started later finds the same file)
        path = unquote(parts.path)[1:]
        database = path if path == ":memory:" else os.path.abspath(path)
        return DatabaseUrl("sqlite", database, pool_size=pool_size, timeout=timeout)

    if scheme in ("postgresql", "postgres"):
        database = unquote(parts.path.lstrip("/"))
        if not database or not parts.hostname:
            raise _bad(url, "a PostgreSQL URL names a host and a database")
        if schema is not None and not _SCHEMA_NAME.match(schema):
            raise _bad(url, "schema must be a plain SQL identifier")
        return DatabaseUrl(
            "postgresql",
            database,
            host=parts.hostname,
            port=port or 5432,
            user=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            schema=schema,
            pool_size=pool_size,
            timeout=timeout,
            extra=query,
        )
    raise _bad(url, f"unknown scheme {parts.scheme!r}")
