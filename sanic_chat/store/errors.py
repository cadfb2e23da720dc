"""The one map from what the database drivers raise to the core's errors.

Every call into the SQL store runs inside :func:`core_errors` (the store's
session, and its ``close``), so nothing but a :class:`~sanic_chat.core.errors.ChatError`
ever leaves the store. The map, first match wins:

* ``IntegrityError`` (peewee, sqlite3, psycopg2) -> ``Conflict``: the only
  unique key a write can hit is ``message_one_streaming`` (every other insert
  is ``ON CONFLICT DO NOTHING``).
* ``UnicodeEncodeError``, ``DataError``, psycopg2's ``ValueError`` for a NUL
  -> ``ValidationFailed``: the text cannot be stored.
* ``OperationalError``, ``InterfaceError``, ``OSError``, ``TimeoutError``,
  uvloop's "the handler is closed" ``RuntimeError``, and a bare
  ``DatabaseError`` (SQLite's "file is not a database", "database disk image
  is malformed") -> ``Unavailable``: the database cannot be reached or used
  right now; retry (``/readyz`` and start-up name the cause).
* any other ``DatabaseError`` / ``sqlite3.Error`` / ``psycopg2.Error`` ->
  ``InternalError``: a bug, or a schema that is not ours (logged here with its
  traceback).
* anything else (a bug of ours, a cancellation) propagates as it is.

An :class:`Unavailable` is caused by an :class:`Unreachable` saying why in one
line for operators (the driver's own words and the server, never a password);
the driver's exception is that one's cause. The core's logs and ``/readyz``
name it through ``failure_cause`` without knowing any driver.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import peewee
import psycopg2

from ..core.errors import ChatError, Conflict, InternalError, Unavailable, ValidationFailed

__all__ = [
    "Unreachable",
    "core_errors",
    "describe_failure",
    "translate",
    "unreachable",
    "unstorable",
]

log = logging.getLogger(__name__)

_CONFLICT = (peewee.IntegrityError, sqlite3.IntegrityError, psycopg2.IntegrityError)
_UNSTORABLE = (UnicodeEncodeError, peewee.DataError, sqlite3.DataError, psycopg2.DataError)
#: every way a driver says "the database cannot be reached or used right now"
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    peewee.OperationalError,
    peewee.InterfaceError,
    sqlite3.OperationalError,
    sqlite3.InterfaceError,
    psycopg2.OperationalError,
    psycopg2.InterfaceError,
    OSError,
    TimeoutError,  # connecting, or waiting for a pooled connection (asyncio.TimeoutError too)
)
#: the drivers' base error itself, not a subclass: the database file or server is unusable
_UNUSABLE = frozenset({peewee.DatabaseError, sqlite3.DatabaseError, psycopg2.DatabaseError})
_OTHER_DATABASE_ERRORS = (peewee.DatabaseError, sqlite3.Error, psycopg2.Error)


class Unreachable(Exception):
    """Why the database cannot be used right now, in one line for operators: the
    driver's own words and where (``host:port``), never a password.

    It is the ``__cause__`` of every :class:`Unavailable` the store raises for a
    driver failure (the driver's exception is its own cause), so the core's logs
    and ``/readyz`` can name the real cause without knowing any driver --
    ``Unavailable.message`` is for clients ("retry with the same client_id")."""


def describe_failure(exc: BaseException, where: str | None = None) -> str:
    """One line naming ``exc`` for an operator: the first line of the driver's
    text (libpq adds hints on further lines, and "FATAL:" in front), then ``where``."""
    if isinstance(exc, TimeoutError) and not str(exc):
        text = "timed out"
    else:
        lines = (line.strip() for line in str(exc).splitlines())
        text = next((line for line in lines if line), "") or type(exc).__name__
        # the server is named once, by ``where`` (libpq may name it first, by address)
        text = re.sub(r"^connection to server (at|on socket) .*? failed:\s*", "", text)
        text = re.sub(r"^(FATAL|ERROR|PANIC):\s+", "", text)
        if text[:1].isupper() and text[1:2].islower():
            text = text[0].lower() + text[1:]  # "Connection refused" reads as part of a line
    return f"{text} ({where})" if where else text


def unreachable(exc: BaseException, where: str | None = None) -> Unreachable:
    """An :class:`Unreachable` describing ``exc``, chained to it."""
    described = Unreachable(describe_failure(exc, where))
    described.__cause__ = exc
    return described


def unstorable() -> ValidationFailed:
    """What a text the database cannot hold gets (NUL on PostgreSQL, a lone surrogate)."""
    return ValidationFailed(
        "the text cannot be stored: it contains NUL characters or lone surrogates"
    )


def _is_stale_poll(exc: BaseException) -> bool:
    """Pool recovery after an outage, on uvloop (Sanic's event loop): a connection
    that died unclosed leaves uvloop watching its descriptor number, and aiopg's
    next connect that gets the same number fails with ``RuntimeError(... the
    handler is closed)`` instead of a driver error (aio-libs/aiopg#909). It means
    what a refused connect means -- unreachable right now -- and a later attempt
    gets through."""
    return isinstance(exc, RuntimeError) and "handler is closed" in str(exc)


def _is_nul(exc: BaseException) -> bool:
    # psycopg2 refuses NUL in a string parameter before sending anything
    return type(exc) is ValueError and "NUL (0x00)" in str(exc)


def translate(exc: BaseException, where: str | None = None) -> ChatError | None:
    """The core's error for a driver's ``exc`` (chained to it), or None if it is
    not a driver's (a bug of ours, a cancellation: it propagates as it is)."""
    if isinstance(exc, ChatError):
        return None
    if isinstance(exc, _CONFLICT):
        error: ChatError = Conflict("a reply is already running in this conversation")
        error.__cause__ = exc
    elif isinstance(exc, _UNSTORABLE) or _is_nul(exc):
        error = unstorable()
        error.__cause__ = exc
    elif isinstance(exc, _UNAVAILABLE) or type(exc) in _UNUSABLE:
        error = Unavailable()
        error.__cause__ = unreachable(exc, where)
    elif _is_stale_poll(exc):
        error = Unavailable()
        error.__cause__ = unreachable(ConnectionError("connection lost"), where)
    elif isinstance(exc, _OTHER_DATABASE_ERRORS):
        log.error("database error", exc_info=exc)
        error = InternalError("the database refused the statement")
        error.__cause__ = exc
    else:
        return None
    error.__suppress_context__ = True
    return error


@contextmanager
def core_errors(where: str | None = None) -> Iterator[None]:
    """Raise the core's error for every driver exception raised in the block
    (``where``: the server, for :class:`Unreachable`'s text)."""
    try:
        yield
    except Exception as exc:
        error = translate(exc, where)
        if error is None:
            raise
        raise error from error.__cause__
