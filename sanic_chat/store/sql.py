"""The SQL :class:`~sanic_chat.core.ports.MessageStore`: peewee queries, peewee-async execution.

The same models and queries run on SQLite (aiosqlite) and PostgreSQL (aiopg);
``database.py`` builds the connection pools. The semantics are those of
``memory.py`` (the reference); the database adds durability and makes the
invariants hold across processes and nodes:

* Idempotency is the unique key (conversation, client_id): the user message
  is inserted ``ON CONFLICT DO NOTHING``; zero rows inserted means "seen
  before", the transaction is rolled back (nothing new, ``updated_at`` not
  bumped) and the first attempt's messages are returned.
* Conflict is the partial unique index "one streaming row per conversation":
  the reply insert fails, the whole transaction (user message too) rolls back.
* On PostgreSQL the first statement of a post (``UPDATE conversation ...``)
  locks the conversation row, so concurrent posts to one conversation queue
  up there and a racing duplicate sees the winner's committed rows.
* On SQLite there is one writer at a time: writes in this process queue on an
  ``asyncio.Lock`` (no busy-wait, no "database is locked"); writers in other
  processes are kept apart by ``BEGIN IMMEDIATE`` and the busy timeout.
  Reads run on other pooled connections, concurrently (WAL).

Every connectivity failure leaves as :class:`Unavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

import peewee
from peewee_async.databases import AioDatabase

from ..core.errors import Conflict, Interrupted, NotFound, Unavailable
from ..core.ports import MessageStore, Posted, new_conversation_id
from ..core.records import Conversation, ErrorInfo, Message, Role, Status, Usage, title_from, utcnow
from .database import connect_database, parse_url, unavailable_on_failure
from .memory import REPLY_AFTER
from .models import ConversationRow, MessageRow, schema_statements

__all__ = ["SqlMessageStore", "open_store"]

#: history() reads newest-first in pages of this many rows until the budget is spent
_HISTORY_PAGE = 200
#: any constant works; it only has to be the same in every process
_MIGRATE_LOCK_KEY = 0x5A_C4A7


async def _rowcount(database: AioDatabase, cursor: Any) -> int:
    return int(cursor.rowcount)


async def _fetchone(database: AioDatabase, cursor: Any) -> Any:
    return await cursor.fetchone()


def _conversation(row: ConversationRow) -> Conversation:
    return Conversation(
        id=row.id,
        owner=row.owner,
        title=row.title,
        model=row.model,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _message(row: MessageRow) -> Message:
    usage = None
    if row.input_tokens is not None or row.output_tokens is not None:
        usage = Usage(row.input_tokens, row.output_tokens)
    error = None
    if row.error_code is not None:
        error = ErrorInfo(row.error_code, row.error_message or "")
    return Message(
        id=row.id,
        conversation_id=row.conversation_id,
        role=cast(Role, row.role),  # only this module writes these columns
        content=row.content,
        status=cast(Status, row.status),
        model=row.model,
        created_at=row.created_at,
        completed_at=row.completed_at,
        reply_to=row.reply_to,
        client_id=row.client_id,
        usage=usage,
        finish_reason=row.finish_reason,
        error=error,
    )


def _before(created_at: datetime, message_id: str, *, inclusive: bool = False) -> Any:
    """Rows ordered before (created_at, id) -- the key every message list sorts on."""
    same_moment = MessageRow.created_at == created_at
    tie = MessageRow.id <= message_id if inclusive else MessageRow.id < message_id
    return (MessageRow.created_at < created_at) | (same_moment & tie)


@contextlib.contextmanager
def _stale_poll_is_unavailable() -> Iterator[None]:
    """Pool recovery after an outage, on uvloop (Sanic's event loop): a connection
    that died unclosed leaves uvloop watching its descriptor number, and aiopg's
    next connect that gets the same number fails with ``RuntimeError(... the
    handler is closed)`` instead of a driver error. It means what a refused
    connect means -- unreachable right now -- and a later attempt gets through."""
    try:
        yield
    except RuntimeError as exc:
        if "handler is closed" not in str(exc):
            raise
        raise Unavailable() from exc


@dataclass(slots=True)
class _Transaction:
    #: set to end the transaction with ROLLBACK instead of COMMIT, without an error
    rollback_only: bool = False


class SqlMessageStore:
    """A :class:`~sanic_chat.core.ports.MessageStore` on SQLite or PostgreSQL."""

    def __init__(
        self,
        database: AioDatabase,
        *,
        backend: str,
        connections: int,
        schema: str | None = None,
    ) -> None:
        self._db = database
        self.backend = backend
        #: the PostgreSQL schema holding the tables (None: the default search_path)
        self.schema = schema
        self._sqlite = backend == "sqlite"
        self._write_lock = asyncio.Lock()
        # A FIFO queue in front of the pool, as large as the pool. aiopg's pool
        # lets a task that just released a connection take it straight back
        # ahead of the waiters, which starved some posts for seconds under load;
        # with this, the pool never has waiters and the queue here is fair.
        self._connections = asyncio.Semaphore(connections)
        self._closed = False

    # ------------------------------------------------------------------ plumbing

    @contextlib.asynccontextmanager
    async def _session(self, *, write: bool) -> AsyncIterator[None]:
        """One pooled connection for the block (nested queries reuse it), with
        every connectivity failure translated. Always in the same order -- the
        SQLite write lock, a connection slot, the connection -- so no cycle."""
        if self._closed:
            raise Unavailable("the store is closed")
        with unavailable_on_failure(), _stale_poll_is_unavailable():
            async with contextlib.AsyncExitStack() as stack:
                if write and self._sqlite:
                    await stack.enter_async_context(self._write_lock)
                await stack.enter_async_context(self._connections)
                await stack.enter_async_context(self._db.aio_connection())
                yield

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[_Transaction]:
        # IMMEDIATE takes SQLite's write lock up front: a deferred transaction
        # that reads first may fail to upgrade ("database is locked") with no retry.
        begin = "BEGIN IMMEDIATE" if self._sqlite else "BEGIN"
        async with self._session(write=True):
            await self._db.aio_execute_sql(begin)
            tx = _Transaction()
            try:
                yield tx
                await self._db.aio_execute_sql("ROLLBACK" if tx.rollback_only else "COMMIT")
            except BaseException:
                # A failed ROLLBACK leaves the connection mid-transaction; both
                # pools discard such a connection instead of reusing it.
                with contextlib.suppress(Exception):
                    await self._db.aio_execute_sql("ROLLBACK")
                raise

    async def _select(self, query: Any) -> list[Any]:
        async with self._session(write=False):
            rows: list[Any] = await query.aio_execute(self._db)
            return rows

    async def _write(self, query: Any) -> Any:
        """One statement in autocommit (atomic on its own)."""
        async with self._session(write=True):
            return await query.aio_execute(self._db)

    async def _count(self, query: Any) -> int:
        return int(await self._db.aio_execute(query, fetch_results=_rowcount))

    # ------------------------------------------------------------------ lifecycle

    async def migrate(self) -> None:
        """Create the schema (PostgreSQL), tables and indices that are missing.

        Safe to run again and from several processes at once: everything is
        ``IF NOT EXISTS``, in one transaction, serialized by an advisory lock on
        PostgreSQL (concurrent ``CREATE ... IF NOT EXISTS`` can still collide
        there) and by ``BEGIN IMMEDIATE`` on SQLite.
        """
        async with self._transaction():
            if not self._sqlite:
                await self._db.aio_execute_sql(
                    "SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK_KEY,), _fetchone
                )
                if self.schema is not None:
                    # the name is a checked identifier (database.parse_url)
                    await self._db.aio_execute_sql(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            for sql, params in schema_statements(self._db):
                await self._db.aio_execute_sql(sql, params)

    async def ping(self) -> None:
        async with self._session(write=False):
            await self._db.aio_execute_sql("SELECT 1", None, _fetchone)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with unavailable_on_failure():
            await self._db.aio_close()

    # ------------------------------------------------------------------ conversations

    async def create_conversation(
        self, owner: str, *, title: str | None = None, model: str | None = None
    ) -> Conversation:
        now = utcnow()
        conversation = Conversation(str(uuid.uuid4()), owner, title, model, now, now)
        async with self._session(write=True):
            await self._count(
                ConversationRow.insert(
                    id=conversation.id,
                    owner=owner,
                    title=title,
                    model=model,
                    created_at=now,
                    updated_at=now,
                )
            )
        return conversation

    async def get_conversation(self, owner: str, conversation_id: str) -> Conversation | None:
        rows = await self._select(
            ConversationRow.select().where(
                (ConversationRow.id == conversation_id) & (ConversationRow.owner == owner)
            )
        )
        return _conversation(rows[0]) if rows else None

    async def list_conversations(
        self, owner: str, *, limit: int = 50, before: datetime | None = None
    ) -> list[Conversation]:
        if limit <= 0:
            return []
        where = ConversationRow.owner == owner
        if before is not None:
            where &= ConversationRow.updated_at < before
        rows = await self._select(
            ConversationRow.select()
            .where(where)
            .order_by(ConversationRow.updated_at.desc(), ConversationRow.id.desc())
            .limit(limit)
        )
        return [_conversation(row) for row in rows]

    async def delete_conversation(self, owner: str, conversation_id: str) -> bool:
        # Its messages go with it: ON DELETE CASCADE (foreign_keys=ON on SQLite).
        async with self._session(write=True):
            deleted = await self._count(
                ConversationRow.delete().where(
                    (ConversationRow.id == conversation_id) & (ConversationRow.owner == owner)
                )
            )
        return deleted > 0

    # ------------------------------------------------------------------ posting

    async def post_user_message(
        self,
        owner: str,
        *,
        conversation_id: str | None,
        client_id: str,
        content: str,
        model: str,
        node_id: str,
        lease_until: datetime,
    ) -> Posted:
        now = utcnow()
        user_id, reply_id = str(uuid.uuid4()), str(uuid.uuid4())
        async with self._transaction() as tx:
            if conversation_id is None:
                conversation_id = new_conversation_id(owner, client_id)
                # A retry (or a racing duplicate) finds the first attempt's row.
                await self._count(
                    ConversationRow.insert(
                        id=conversation_id,
                        owner=owner,
                        title=title_from(content),
                        model=model,
                        created_at=now,
                        updated_at=now,
                    ).on_conflict(conflict_target=[ConversationRow.id], action="nothing")
                )
            # Checks ownership, bumps updated_at and (PostgreSQL) locks the row.
            touched = await self._db.aio_execute(
                ConversationRow.update(updated_at=now)
                .where((ConversationRow.id == conversation_id) & (ConversationRow.owner == owner))
                .returning(ConversationRow)
            )
            if not touched:
                raise NotFound("conversation not found")
            conversation = _conversation(touched[0])

            inserted = await self._count(
                MessageRow.insert(
                    id=user_id,
                    conversation=conversation_id,
                    role="user",
                    content=content,
                    status="complete",
                    model=model,
                    client_id=client_id,
                    created_at=now,
                    completed_at=now,
                ).on_conflict(
                    conflict_target=[MessageRow.conversation, MessageRow.client_id],
                    action="nothing",
                )
            )
            if inserted:
                try:
                    await self._count(
                        MessageRow.insert(
                            id=reply_id,
                            conversation=conversation_id,
                            role="assistant",
                            content="",
                            status="streaming",
                            model=model,
                            reply_to=user_id,
                            node_id=node_id,
                            lease_until=lease_until,
                            created_at=now + REPLY_AFTER,
                        )
                    )
                except peewee.IntegrityError:
                    # The only unique key this row can hit is message_one_streaming.
                    raise Conflict("a reply is already running in this conversation") from None
            else:
                tx.rollback_only = True
        if not inserted:
            return await self._seen_before(owner, conversation_id, client_id)
        user = Message(
            id=user_id,
            conversation_id=conversation_id,
            role="user",
            content=content,
            status="complete",
            model=model,
            created_at=now,
            completed_at=now,
            client_id=client_id,
        )
        reply = Message(
            id=reply_id,
            conversation_id=conversation_id,
            role="assistant",
            content="",
            status="streaming",
            model=model,
            created_at=now + REPLY_AFTER,
            reply_to=user_id,
        )
        return Posted(conversation, user, reply, created=True)

    async def _seen_before(self, owner: str, conversation_id: str, client_id: str) -> Posted:
        """The idempotent answer: what the first post with ``client_id`` stored."""
        async with self._session(write=False):
            conversations = await self._db.aio_execute(
                ConversationRow.select().where(
                    (ConversationRow.id == conversation_id) & (ConversationRow.owner == owner)
                )
            )
            users = await self._db.aio_execute(
                MessageRow.select().where(
                    (MessageRow.conversation == conversation_id)
                    & (MessageRow.client_id == client_id)
                )
            )
            if not conversations or not users:  # deleted in between
                raise NotFound("conversation not found")
            replies = await self._db.aio_execute(
                MessageRow.select()
                .where(MessageRow.reply_to == users[0].id)
                .order_by(MessageRow.created_at, MessageRow.id)
                .limit(1)
            )
        reply = _message(replies[0]) if replies else None
        return Posted(_conversation(conversations[0]), _message(users[0]), reply, created=False)

    # ------------------------------------------------------------------ reading

    async def get_message(self, owner: str, message_id: str) -> Message | None:
        rows = await self._select(
            MessageRow.select(MessageRow)
            .join(ConversationRow, on=(MessageRow.conversation == ConversationRow.id))
            .where((MessageRow.id == message_id) & (ConversationRow.owner == owner))
        )
        return _message(rows[0]) if rows else None

    async def list_messages(
        self, owner: str, conversation_id: str, *, limit: int = 50, before: str | None = None
    ) -> list[Message] | None:
        async with self._session(write=False):
            owned = await self._db.aio_execute(
                ConversationRow.select(ConversationRow.id).where(
                    (ConversationRow.id == conversation_id) & (ConversationRow.owner == owner)
                )
            )
            if not owned:
                return None
            if limit <= 0:
                return []
            where = MessageRow.conversation == conversation_id
            if before is not None:
                anchors = await self._db.aio_execute(
                    MessageRow.select(MessageRow.id, MessageRow.created_at).where(
                        (MessageRow.id == before) & (MessageRow.conversation == conversation_id)
                    )
                )
                if not anchors:
                    return []
                where &= _before(anchors[0].created_at, anchors[0].id)
            rows = await self._db.aio_execute(
                MessageRow.select()
                .where(where)
                .order_by(MessageRow.created_at.desc(), MessageRow.id.desc())
                .limit(limit)
            )
        return [_message(row) for row in reversed(rows)]

    async def history(
        self, conversation_id: str, *, before: Message, max_chars: int
    ) -> list[Message]:
        kept: list[Message] = []
        used = 0
        cursor = (before.created_at, before.id)
        inclusive = True
        async with self._session(write=False):
            while True:
                rows = await self._db.aio_execute(
                    MessageRow.select()
                    .where(
                        (MessageRow.conversation == conversation_id)
                        & _before(*cursor, inclusive=inclusive)
                    )
                    .order_by(MessageRow.created_at.desc(), MessageRow.id.desc())
                    .limit(_HISTORY_PAGE)
                )
                for row in rows:
                    if row.role == "assistant" and not row.content:
                        continue
                    # ``before`` is always kept; after it, stop at the first one that
                    # does not fit, so the context is a contiguous suffix.
                    if kept and used + len(row.content) > max_chars:
                        return self._oldest_first(kept, before)
                    kept.append(_message(row))
                    used += len(row.content)
                if len(rows) < _HISTORY_PAGE:
                    return self._oldest_first(kept, before)
                cursor, inclusive = (rows[-1].created_at, rows[-1].id), False

    @staticmethod
    def _oldest_first(kept: list[Message], before: Message) -> list[Message]:
        if not kept:  # ``before`` is not (or no longer) stored: it is still the context
            kept = [before]
        kept.reverse()
        return kept

    # ------------------------------------------------------------------ replies

    async def checkpoint(self, message_id: str, content: str) -> None:
        await self._write(
            MessageRow.update(content=content).where(
                (MessageRow.id == message_id) & (MessageRow.status == "streaming")
            )
        )

    async def finish(
        self,
        message_id: str,
        *,
        content: str,
        status: Status,
        usage: Usage | None = None,
        finish_reason: str | None = None,
        error: ErrorInfo | None = None,
    ) -> Message:
        # Conditional on status='streaming': of two finishers (say, a cancel and
        # the stream's end) exactly one writes; the other reads what it wrote.
        async with self._session(write=True):
            rows = await self._db.aio_execute(
                MessageRow.update(
                    content=content,
                    status=status,
                    input_tokens=usage.input_tokens if usage else None,
                    output_tokens=usage.output_tokens if usage else None,
                    finish_reason=finish_reason,
                    error_code=error.code if error else None,
                    error_message=error.message if error else None,
                    completed_at=utcnow(),
                )
                .where((MessageRow.id == message_id) & (MessageRow.status == "streaming"))
                .returning(MessageRow)
            )
            if not rows:
                rows = await self._db.aio_execute(
                    MessageRow.select().where(MessageRow.id == message_id)
                )
        if not rows:
            raise NotFound("message not found")
        return _message(rows[0])

    async def renew_leases(self, node_id: str, message_ids: Sequence[str], until: datetime) -> None:
        if not message_ids:
            return
        await self._write(
            MessageRow.update(lease_until=until).where(
                MessageRow.id.in_(list(message_ids))
                & (MessageRow.node_id == node_id)
                & (MessageRow.status == "streaming")
            )
        )

    async def interrupt_orphans(
        self, *, now: datetime, node_id: str | None = None
    ) -> list[Message]:
        # One conditional UPDATE: two nodes sweeping at once interrupt each row once.
        orphaned = MessageRow.status == "streaming"
        if node_id is not None:
            orphaned &= MessageRow.node_id == node_id
        else:
            orphaned &= MessageRow.lease_until.is_null() | (MessageRow.lease_until < now)
        rows = await self._write(
            MessageRow.update(
                status="interrupted",
                completed_at=utcnow(),
                error_code=Interrupted.code,
                error_message=Interrupted.default_message(),
            )
            .where(orphaned)
            .returning(MessageRow)
        )
        orphans = [_message(row) for row in rows]
        orphans.sort(key=lambda m: (m.created_at, m.id))
        return orphans


async def open_store(url: str, *, schema: str | None = None) -> SqlMessageStore:
    """Open the store at ``url``; see ``database.py`` for the accepted forms.

    Does no I/O: the pool connects on first use, so this succeeds while the
    database is down and the first call raises :class:`Unavailable`. Call
    :meth:`SqlMessageStore.migrate` before use. ``schema`` (PostgreSQL only;
    or ``?schema=`` in the URL) keeps every table in that schema. A malformed
    URL raises :class:`ValueError` that lists the accepted forms.
    """
    parsed = parse_url(url, schema=schema)
    return SqlMessageStore(
        connect_database(parsed),
        backend=parsed.backend,
        connections=parsed.connections,
        schema=parsed.schema,
    )


if TYPE_CHECKING:
    _conforms: type[MessageStore] = SqlMessageStore  # mypy checks it against the port
