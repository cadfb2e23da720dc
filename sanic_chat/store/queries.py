"""The peewee queries both dialects run, compiled once per database, and how they run.

Every query of a fixed shape is compiled once per store (``statements.py``:
peewee generates the text, each call only binds its values). A statement runs
on the connection the caller's session holds (peewee-async keeps it in a
context variable), through the database's one way out, ``aio_execute_sql``.
The hand-written SQL of each dialect is in ``postgres.py`` and ``sqlite.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import peewee
from peewee_async.databases import AioDatabase, FetchResults

from ..core.errors import Interrupted
from .models import ConversationRow, MessageRow
from .rows import CONVERSATION_COLUMNS, MESSAGE_COLUMNS
from .statements import Param, Statement, compile_query

__all__ = [
    "HISTORY_PAGE",
    "Queries",
    "Transaction",
    "fetchall",
    "fetchone",
    "rowcount",
    "run",
    "transaction",
]

#: history() reads newest-first in pages of this many rows until the budget is spent
HISTORY_PAGE = 200


async def rowcount(database: AioDatabase, cursor: Any) -> int:
    return int(cursor.rowcount)


async def fetchone(database: AioDatabase, cursor: Any) -> Any:
    return await cursor.fetchone()


async def fetchall(database: AioDatabase, cursor: Any) -> list[Any]:
    rows: list[Any] = await cursor.fetchall()
    return rows


async def run(
    database: AioDatabase, statement: Statement, fetch: FetchResults, /, **values: Any
) -> Any:
    """Execute a compiled statement with ``values`` for its placeholders."""
    return await database.aio_execute_sql(statement.sql, statement.bind(values), fetch)


@dataclass(slots=True)
class Transaction:
    #: set to end the transaction with ROLLBACK instead of COMMIT, without an error
    rollback_only: bool = False


@contextlib.asynccontextmanager
async def transaction(database: AioDatabase, begin: str) -> AsyncIterator[Transaction]:
    """A transaction on the session's connection, opened with ``begin``."""
    await database.aio_execute_sql(begin)
    tx = Transaction()
    try:
        yield tx
        await database.aio_execute_sql("ROLLBACK" if tx.rollback_only else "COMMIT")
    except BaseException:
        # A failed ROLLBACK leaves the connection mid-transaction; both
        # pools discard such a connection instead of reusing it.
        with contextlib.suppress(Exception):
            await database.aio_execute_sql("ROLLBACK")
        raise


def _params(*fields: str) -> dict[str, Param]:
    """Each field's value is the placeholder of the same name."""
    return {field: Param(field) for field in fields}


def _before(*, inclusive: bool) -> Any:
    """Rows ordered before (``created_at``, ``id``) -- the key every message list sorts on."""
    same_moment = MessageRow.created_at == Param("created_at")
    tie = MessageRow.id <= Param("id") if inclusive else MessageRow.id < Param("id")
    return (MessageRow.created_at < Param("created_at")) | (same_moment & tie)


class Queries:
    """Every query of a fixed shape that both dialects run, compiled for one database.

    The names of their :class:`Param` placeholders are the keyword arguments
    of :func:`run`.
    """

    def __init__(self, database: peewee.Database) -> None:
        def compiled(query: peewee.Node) -> Statement:
            return compile_query(database, query)

        owned = (ConversationRow.id == Param("conversation_id")) & (
            ConversationRow.owner == Param("owner")
        )
        conversations = ConversationRow.select(*CONVERSATION_COLUMNS)
        messages = MessageRow.select(*MESSAGE_COLUMNS)
        new_conversation = ConversationRow.insert(
            id=Param("conversation_id"),
            **_params("owner", "title", "model"),
            created_at=Param("now"),
            updated_at=Param("now"),
        )
        newest_first = (MessageRow.created_at.desc(), MessageRow.id.desc())
        in_conversation = MessageRow.conversation == Param("conversation_id")

        # conversations
        self.insert_conversation = compiled(new_conversation)
        self.get_conversation = compiled(conversations.where(owned))
        by_owner = ConversationRow.owner == Param("owner")
        self.list_conversations, self.list_conversations_before = (
            compiled(
                conversations.where(where)
                .order_by(ConversationRow.updated_at.desc(), ConversationRow.id.desc())
                .limit(Param("limit"))
            )
            for where in (by_owner, by_owner & (ConversationRow.updated_at < Param("before")))
        )
        self.delete_conversation = compiled(ConversationRow.delete().where(owned))
        self.conversation_is_owned = compiled(
            ConversationRow.select(ConversationRow.id).where(owned)
        )

        # posting, step by step (SQLite; PostgreSQL posts in one statement: postgres.py)
        self.insert_conversation_if_new = compiled(
            new_conversation.on_conflict(conflict_target=[ConversationRow.id], action="nothing")
        )
        self.touch_conversation = compiled(
            ConversationRow.update(updated_at=Param("now"))
            .where(owned)
            .returning(*CONVERSATION_COLUMNS)
        )
        self.insert_user = compiled(
            MessageRow.insert(
                conversation=Param("conversation_id"),
                role="user",
                status="complete",
                **_params("id", "content", "model", "client_id"),
                created_at=Param("now"),
                completed_at=Param("now"),
            ).on_conflict(
                conflict_target=[MessageRow.conversation, MessageRow.client_id],
                action="nothing",
            )
        )
        self.insert_reply = compiled(
            MessageRow.insert(
                conversation=Param("conversation_id"),
                role="assistant",
                content="",
                status="streaming",
                **_params("id", "model", "reply_to", "node_id", "lease_until", "created_at"),
            )
        )
        self.user_by_client_id = compiled(
            messages.where(in_conversation & (MessageRow.client_id == Param("client_id")))
        )
        self.first_reply = compiled(
            messages.where(MessageRow.reply_to == Param("user_id"))
            .order_by(MessageRow.created_at, MessageRow.id)
            .limit(1)
        )

        # reading
        self.get_message = compiled(
            messages.join(
                ConversationRow, on=(MessageRow.conversation == ConversationRow.id)
            ).where((MessageRow.id == Param("id")) & (ConversationRow.owner == Param("owner")))
        )
        self.message = compiled(messages.where(MessageRow.id == Param("id")))
        self.anchor = compiled(
            MessageRow.select(MessageRow.id, MessageRow.created_at).where(
                (MessageRow.id == Param("id")) & in_conversation
            )
        )
        self.list_messages, self.list_messages_before = (
            compiled(messages.where(where).order_by(*newest_first).limit(Param("limit")))
            for where in (in_conversation, in_conversation & _before(inclusive=False))
        )
        self.history_first, self.history_next = (
            compiled(
                messages.where(in_conversation & _before(inclusive=inclusive))
                .order_by(*newest_first)
                .limit(HISTORY_PAGE)
            )
            for inclusive in (True, False)
        )

        # replies
        streaming = MessageRow.status == "streaming"
        self.finish = compiled(
            MessageRow.update(
                **_params(
                    "content",
                    "status",
                    "input_tokens",
                    "output_tokens",
                    "finish_reason",
                    "error_code",
                    "error_message",
                ),
                completed_at=Param("now"),
            )
            .where((MessageRow.id == Param("id")) & streaming)
            .returning(*MESSAGE_COLUMNS)
        )
        interrupt = MessageRow.update(
            status="interrupted",
            completed_at=Param("now"),
            error_code=Interrupted.code,
            error_message=Interrupted.default_message(),
        )
        expired = MessageRow.lease_until.is_null() | (MessageRow.lease_until < Param("before"))
        self.interrupt_node, self.interrupt_expired = (
            compiled(interrupt.where(streaming & orphaned).returning(*MESSAGE_COLUMNS))
            for orphaned in (MessageRow.node_id == Param("node_id"), expired)
        )
