"""The SQL schema, as peewee models: the same tables and queries on SQLite and PostgreSQL.

The models are bound to no database. Queries built from them are compiled for
(``statements.py``) or executed through (``db.aio_execute(query)``) a specific
peewee-async database, so one process can hold several stores (SQLite,
PostgreSQL, two "nodes" in a test) at once; DDL is generated inside
``db.bind_ctx`` (``internals.create_statements``).

Invariants the database itself enforces, so that they hold across processes
and nodes, not just inside one store object:

* ``message_client_key``: a user message is stored at most once per
  (conversation, client_id) -- the idempotency key. Assistant rows have a NULL
  client_id, and NULLs never collide in a unique index (SQLite and PostgreSQL).
* ``message_one_streaming``: at most one ``streaming`` row per conversation, a
  partial unique index -- this is what makes ``Conflict`` atomic.

Timestamps are stored as naive UTC (``TIMESTAMP`` / ISO text) and come back as
aware UTC datetimes; ids are UUID strings in ``VARCHAR(36)`` so that a
malformed id is simply not found rather than a type error on PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import peewee
from peewee_async import AioModel

__all__ = [
    "MODELS",
    "ConversationRow",
    "MessageRow",
    "UtcDateTimeField",
]


class UtcDateTimeField(peewee.DateTimeField):
    """Aware UTC datetimes in Python, naive UTC in the database (both backends)."""

    def db_value(self, value: Any) -> Any:
        if isinstance(value, datetime) and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return super().db_value(value)

    def python_value(self, value: Any) -> Any:
        # ISO text is what SQLite hands back; parsed here without peewee's
        # fallbacks (same result), which cost as much again per timestamp.
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError:
                value = super().python_value(value)
        elif not isinstance(value, datetime):
            value = super().python_value(value)
        if isinstance(value, datetime):
            if value.tzinfo is None:
                return value.replace(tzinfo=UTC)
            return value.astimezone(UTC)
        return value


class _Base(AioModel):
    class Meta:
        legacy_table_names = False


class ConversationRow(_Base):
    id = peewee.CharField(max_length=36, primary_key=True)
    owner = peewee.TextField()
    title = peewee.TextField(null=True)
    model = peewee.TextField(null=True)
    created_at = UtcDateTimeField()
    updated_at = UtcDateTimeField()

    class Meta:
        table_name = "conversation"


class MessageRow(_Base):
    id = peewee.CharField(max_length=36, primary_key=True)
    conversation = peewee.ForeignKeyField(
        ConversationRow,
        column_name="conversation_id",
        on_delete="CASCADE",
        backref="messages",
        index=False,  # subsumed by message_by_time
    )
    role = peewee.CharField(max_length=16)
    content = peewee.TextField(default="")
    status = peewee.CharField(max_length=16)
    model = peewee.TextField(null=True)
    reply_to = peewee.CharField(max_length=36, null=True)
    client_id = peewee.TextField(null=True)
    input_tokens = peewee.IntegerField(null=True)
    output_tokens = peewee.IntegerField(null=True)
    finish_reason = peewee.TextField(null=True)
    error_code = peewee.TextField(null=True)
    error_message = peewee.TextField(null=True)
    node_id = peewee.TextField(null=True)
    lease_until = UtcDateTimeField(null=True)
    created_at = UtcDateTimeField()
    completed_at = UtcDateTimeField(null=True)

    class Meta:
        table_name = "message"


# Named explicitly so that migrate() is idempotent and the names are greppable.
# list_conversations: one owner's, newest first
ConversationRow.add_index(
    ConversationRow.index(
        ConversationRow.owner,
        ConversationRow.updated_at,
        ConversationRow.id,
        name="conversation_by_owner",
    )
)
MessageRow.add_index(
    MessageRow.index(
        MessageRow.conversation, MessageRow.client_id, unique=True, name="message_client_key"
    )
)
# A literal predicate, not a bound parameter: DDL cannot take parameters everywhere.
_STREAMING = peewee.SQL("status = 'streaming'")

MessageRow.add_index(
    MessageRow.index(MessageRow.conversation, unique=True, name="message_one_streaming").where(
        _STREAMING
    )
)
# list_messages / history: a conversation's messages in (created_at, id) order
MessageRow.add_index(
    MessageRow.index(
        MessageRow.conversation, MessageRow.created_at, MessageRow.id, name="message_by_time"
    )
)
# the idempotent path: a user message's reply
MessageRow.add_index(MessageRow.index(MessageRow.reply_to, name="message_reply_to"))
# interrupt_orphans / renew_leases: only the (few) streaming rows are indexed
MessageRow.add_index(
    MessageRow.index(
        MessageRow.node_id, MessageRow.lease_until, name="message_streaming_lease"
    ).where(_STREAMING)
)

MODELS: tuple[type[_Base], ...] = (ConversationRow, MessageRow)
