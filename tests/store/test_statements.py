"""Compiled statements say exactly what peewee says for the same query with values
(both dialects, no database needed)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import peewee
import pytest

from sanic_chat.store.database import connect_database
from sanic_chat.store.models import ConversationRow, MessageRow
from sanic_chat.store.statements import Param, compile_query, compile_text
from sanic_chat.store.url import parse_url

DIALECTS = {
    "sqlite": "sqlite:///:memory:",
    "postgresql": "postgresql://u@127.0.0.1:1/db?schema=s",
}
NOW = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))


def _queries(v: Any) -> list[peewee.Node]:
    """The same queries, with ``v(name, value)`` in every per-call position."""
    before = (MessageRow.created_at < v("at", NOW)) | (
        (MessageRow.created_at == v("at", NOW)) & (MessageRow.id <= v("id", "m-1"))
    )
    return [
        MessageRow.insert(
            id=v("id", "m-1"),
            conversation=v("cid", "c-1"),
            role="user",
            content=v("content", "hi"),
            status="complete",
            client_id=v("client", "k"),
            input_tokens=v("tokens", 12),
            created_at=v("at", NOW),
        ).on_conflict(
            conflict_target=[MessageRow.conversation, MessageRow.client_id], action="nothing"
        ),
        ConversationRow.update(updated_at=v("at", NOW))
        .where((ConversationRow.id == v("cid", "c-1")) & (ConversationRow.owner == "alice"))
        .returning(ConversationRow.id, ConversationRow.updated_at),
        MessageRow.select()
        .where((MessageRow.conversation == v("cid", "c-1")) & before)
        .order_by(MessageRow.created_at.desc())
        .limit(v("limit", 50)),
        MessageRow.update(output_tokens=v("tokens", 12), lease_until=v("until", None)).where(
            MessageRow.lease_until.is_null() | (MessageRow.lease_until < v("at", NOW))
        ),
    ]


@pytest.mark.parametrize("backend", DIALECTS)
def test_a_compiled_query_binds_to_what_peewee_generates_with_the_values(backend: str) -> None:
    database = connect_database(parse_url(DIALECTS[backend]))
    values: dict[str, Any] = {}

    def placeholder(name: str, value: Any) -> Param:
        values[name] = value
        return Param(name)

    compiled = [compile_query(database, query) for query in _queries(placeholder)]
    expected = [database.get_sql_context().sql(q).query() for q in _queries(lambda _, v: v)]
    for statement, (sql, params) in zip(compiled, expected, strict=True):
        assert statement.sql == sql
        assert statement.bind(values) == params
    # the field's conversion is applied at bind time: aware in, naive UTC out
    assert datetime(2024, 5, 1, 10, 0, 0, 123456) in compiled[0].bind(values)


def test_a_name_used_twice_takes_one_value_and_a_missing_one_is_an_error() -> None:
    database = connect_database(parse_url(DIALECTS["sqlite"]))
    statement = compile_query(
        database,
        MessageRow.select(MessageRow.id).where(
            (MessageRow.id == Param("id")) | (MessageRow.reply_to == Param("id"))
        ),
    )
    assert statement.names == {"id"}
    assert statement.bind({"id": "m-1"}) == ["m-1", "m-1"]
    with pytest.raises(KeyError):
        statement.bind({})


@pytest.mark.parametrize("backend", DIALECTS)
def test_hand_written_sql_takes_the_dialects_placeholders_and_converts_as_told(
    backend: str,
) -> None:
    database = connect_database(parse_url(DIALECTS[backend]))
    convert_time = MessageRow.created_at.db_value
    statement = compile_text(
        database,
        "UPDATE message SET content = {content} WHERE id = {id} OR reply_to = {id}"
        " AND created_at < {at}",
        {"at": convert_time},
    )
    mark = "?" if backend == "sqlite" else "%s"
    assert statement.sql == (
        f"UPDATE message SET content = {mark} WHERE id = {mark} OR reply_to = {mark}"
        f" AND created_at < {mark}"
    )
    assert statement.names == {"content", "id", "at"}
    assert statement.bind({"content": "hi", "id": "m-1", "at": NOW}) == [
        "hi",
        "m-1",
        "m-1",
        convert_time(NOW),
    ]
