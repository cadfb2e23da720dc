"""What keeps the server from starting, said in one line.

``sanic-chat serve`` checks its environment before it serves -- the address it
listens on, the SQLite file, Redis -- and ``sanic-chat migrate`` the database
file, so that a wrong one stops the command at once with ONE line on stderr
naming the cause and what to fix (docs/deployment.md lists them), and exit
status 2: no traceback, no process left hanging. The app's start-up in each
worker raises the same :class:`StartupError` for whatever changed in between,
after closing what it had opened (a pool's thread would keep the process alive).

PostgreSQL is not checked here but by each worker as it starts (``wiring.py``'s
``open_store_for``, called by ``app.py``: it migrates the schema, or checks it is
there): one it cannot use stops the start with :func:`unusable_postgres`. Once
serving, a node rides out a PostgreSQL outage (``/readyz`` answers 503 with the
cause until the database is back).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from .config import Settings, default_database_url
from .redaction import redact_url

if TYPE_CHECKING:
    from .core.ports import Bus

__all__ = [
    "StartupError",
    "check_address",
    "check_bus",
    "prepare_sqlite",
    "reason",
    "redact_url",
    "start_bus",
    "unusable_postgres",
    "unusable_sqlite",
]


class StartupError(Exception):
    """The environment stops sanic-chat from starting; the message (one line)
    names the cause and what to fix."""


def reason(exc: BaseException) -> str:
    """Why ``exc`` happened, in a few words: the OS's own ("connection refused",
    "permission denied") when an OS error is in its chain of causes, else the
    deepest cause's text (a driver's, not our client-facing wrapper's)."""
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    for cause in reversed(chain):
        if isinstance(cause, socket.gaierror):
            return str(cause.strerror or cause).lower()  # "name or service not known"
        if isinstance(cause, OSError) and cause.errno and cause.errno > 0:
            return os.strerror(cause.errno).lower()
    if any(isinstance(cause, TimeoutError) for cause in chain):
        return "no answer in time"
    for cause in reversed(chain):
        text = str(cause).strip().splitlines()[0].rstrip(".") if str(cause).strip() else ""
        if text:
            return text[0].lower() + text[1:] if text[1:2].islower() else text
    return type(exc).__name__


def check_address(host: str, port: int) -> None:
    """Raise :class:`StartupError` unless ``host:port`` can be listened on now:
    bound (with SO_REUSEADDR, as Sanic binds) and let go again."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise StartupError(
            f"cannot listen on {host}:{port}: {reason(exc)} (fix --host or SANIC_CHAT_HOST)"
        ) from None
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(
                    f"port {port} on {host} is in use: stop what listens there, or choose "
                    "another port with --port (or SANIC_CHAT_PORT)"
                ) from None
            raise StartupError(
                f"cannot listen on {host}:{port}: {reason(exc)} "
                "(fix --host/--port, or SANIC_CHAT_HOST/SANIC_CHAT_PORT)"
            ) from None


def prepare_sqlite(settings: Settings) -> str:
    """Make the SQLite database openable, or raise :class:`StartupError` naming
    the path, the OS's reason and the variable to fix.

    The data directory is created for the default database (it lives there); a
    database URL of one's own names a directory that must exist. The file is
    opened for writing (created empty if missing, which SQLite takes as a new
    database): what SQLite would say is only "unable to open database file".
    Returns the file's path (or ``:memory:``).
    """
    from .store.url import parse_url

    url = parse_url(settings.database_url)  # a wrong URL: ValueError, a config error
    if url.in_memory:
        return url.database
    own_url = settings.database_url != default_database_url(settings.data_dir)
    variable = "SANIC_CHAT_DATABASE_URL" if own_url else "SANIC_CHAT_DATA_DIR"
    if not own_url:
        try:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupError(
                f"cannot create the data directory {settings.data_dir}: {reason(exc)} "
                f"(set {variable} to a directory this user can write, or fix its permissions)"
            ) from None
    path = Path(url.database)
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o644))
    except OSError as exc:
        raise StartupError(
            f"cannot open the SQLite database {path}: {_file_problem(exc, path)} "
            f"({_file_fix(settings, variable, path)})"
        ) from None
    return url.database


def unusable_sqlite(path: str, exc: BaseException) -> StartupError:
    """The error for an SQLite file that opens but cannot be used (not a database,
    locked by another program past the busy timeout...)."""
    error = StartupError(f"cannot use the SQLite database {path}: {reason(exc)}")
    error.__cause__ = exc
    return error


def unusable_postgres(url: str, exc: BaseException) -> StartupError:
    """The error for a PostgreSQL database that cannot be reached or used (at
    start-up, or by ``sanic-chat migrate``): the driver's words and the server
    (``Unavailable``'s chained cause: store/errors.py ``Unreachable``)."""
    from .core.errors import Unavailable, failure_cause

    if isinstance(exc, Unavailable):
        fix = "start PostgreSQL, or fix SANIC_CHAT_DATABASE_URL"
    else:  # reached, but refused: permissions, say
        fix = "fix the database user's privileges, or SANIC_CHAT_DATABASE_URL"
    error = StartupError(f"cannot use PostgreSQL at {redact_url(url)}: {failure_cause(exc)}; {fix}")
    error.__cause__ = exc
    return error


def _file_problem(exc: OSError, path: Path) -> str:
    if exc.errno == errno.ENOENT:
        return f"no such directory {path.parent}"
    if exc.errno == errno.ENOTDIR:
        return f"{path.parent} is not a directory"
    if exc.errno == errno.EISDIR:
        return "that is a directory"
    return reason(exc)


def _file_fix(settings: Settings, variable: str, path: Path) -> str:
    fix = f"fix {variable}"
    if variable == "SANIC_CHAT_DATA_DIR":
        return f"{fix} or the permissions of {path.parent}"
    if not path.parent.is_dir():
        fix = f"create {path.parent} or {fix}"
        written = settings.database_url.split("sqlite:///", 1)[-1]
        absolute = Path("/" + written.split("?", 1)[0])
        if not written.startswith("/") and absolute.parent.is_dir():
            # written for the old reading of three slashes: say how to spell that
            fix += f"; for {absolute} write sqlite:///{absolute}"
        return fix
    return f"{fix}, or the permissions of {path if path.exists() else path.parent}"


async def start_bus(bus: Bus, url: str) -> None:
    """``await bus.start()``, or close it and raise :class:`StartupError` naming
    the Redis server and why it cannot be reached."""
    try:
        await bus.start()
    except Exception as exc:
        with contextlib.suppress(Exception):
            await bus.close()
        raise StartupError(
            f"cannot reach Redis at {redact_url(url)}: {reason(exc)} "
            "(start Redis, or fix SANIC_CHAT_BUS_URL)"
        ) from exc


async def check_bus(settings: Settings) -> None:
    """Connect to the configured bus once and let go (nothing to do for memory://): the
    bus the server builds (``wiring.open_bus_for``), tried before it serves."""
    if settings.bus_url.startswith("memory://"):
        return
    from .wiring import open_bus_for

    bus = open_bus_for(settings)
    await start_bus(bus, settings.bus_url)
    await bus.close()
