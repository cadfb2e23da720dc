"""The SQL store raises only the core's errors: every driver exception is
translated by one map (``store/errors.py``), on every path."""

from __future__ import annotations

import sqlite3

import peewee
import psycopg2
import pytest

from sanic_chat.core.errors import (
    ChatError,
    Conflict,
    InternalError,
    Unavailable,
    ValidationFailed,
)
from sanic_chat.store.errors import Unreachable, translate

from .support import Stores, post

CASES: list[tuple[BaseException, type[ChatError]]] = [
    (peewee.IntegrityError("duplicate key"), Conflict),
    (sqlite3.IntegrityError("UNIQUE constraint failed"), Conflict),
    (psycopg2.IntegrityError("duplicate key"), Conflict),
    (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), ValidationFailed),
    (ValueError("A string literal cannot contain NUL (0x00) characters."), ValidationFailed),
    (peewee.DataError("value too long"), ValidationFailed),
    (psycopg2.DataError("invalid byte sequence"), ValidationFailed),
    (peewee.OperationalError("server closed the connection"), Unavailable),
    (sqlite3.OperationalError("disk I/O error"), Unavailable),
    (psycopg2.OperationalError("connection refused"), Unavailable),
    (psycopg2.InterfaceError("connection already closed"), Unavailable),
    (ConnectionRefusedError(111, "Connection refused"), Unavailable),
    (TimeoutError(), Unavailable),
    (RuntimeError("unable to perform operation on <UVPoll>; the handler is closed"), Unavailable),
    (sqlite3.DatabaseError("file is not a database"), Unavailable),
    (peewee.DatabaseError("database disk image is malformed"), Unavailable),
    (peewee.ProgrammingError('relation "message" does not exist'), InternalError),
    (sqlite3.ProgrammingError("closed"), InternalError),
    (psycopg2.ProgrammingError("syntax error"), InternalError),
]


@pytest.mark.parametrize(("raised", "expected"), CASES, ids=lambda c: type(c).__name__)
def test_every_driver_exception_becomes_a_core_error(
    raised: BaseException, expected: type[ChatError]
) -> None:
    error = translate(raised, "db.example:5432")
    assert type(error) is expected
    if expected is Unavailable:
        # the operator's line: the driver's words and where, chained to the driver's exception
        assert isinstance(error.__cause__, Unreachable)
        assert str(error.__cause__).endswith("(db.example:5432)")
    else:
        assert error.__cause__ is raised


@pytest.mark.parametrize(
    "raised", [ValueError("ours"), RuntimeError("ours"), KeyError("id"), Conflict("already ours")]
)
def test_what_is_not_a_drivers_is_left_as_it_is(raised: BaseException) -> None:
    assert translate(raised) is None


async def test_a_post_the_database_cannot_store_is_a_validation_error(sql_stores: Stores) -> None:
    store = await sql_stores.open()
    with pytest.raises(ValidationFailed):
        await post(store, content="lone \ud800 surrogate")
    assert await store.list_conversations("alice") == []  # nothing stored


async def test_a_nul_in_a_post_is_a_validation_error_on_postgres_only(
    sql_stores: Stores,
) -> None:
    store = await sql_stores.open()
    if sql_stores.kind == "sqlite":
        assert (await post(store, content="a\x00b")).user.content == "a\x00b"
        return
    with pytest.raises(ValidationFailed):
        await post(store, content="a\x00b")
    assert await store.list_conversations("alice") == []  # nothing stored


async def test_a_schema_that_is_not_ours_is_an_internal_error(postgres_stores: Stores) -> None:
    store = await postgres_stores.open()
    posted = await post(store)
    assert posted.reply is not None
    conn = psycopg2.connect(postgres_stores.url, connect_timeout=5)
    try:
        conn.autocommit = True
        with conn.cursor() as cursor:  # a column the store writes is gone
            cursor.execute(
                f'ALTER TABLE "{postgres_stores.schema}".message DROP COLUMN finish_reason'
            )
    finally:
        conn.close()
    with pytest.raises(InternalError) as raised:
        await store.finish(posted.reply.id, content="done", status="complete")
    assert isinstance(raised.value.__cause__, peewee.ProgrammingError)
