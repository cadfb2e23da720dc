"""The SQL :class:`~sanic_chat.core.ports.MessageStore`: peewee queries, peewee-async execution.

The same models and queries run on SQLite (aiosqlite) and PostgreSQL (aiopg);
``database.py`` builds the connection pools. The semantics are those of
``memory.py`` (the reference); the database adds durability and makes the
invariants hold across processes and nodes:

* Idempotency is the unique key (conversation, client_id): the user message
  is inserted ``ON CONFLICT DO NOTHING``; zero rows inserted means "seen
  before": nothing is written (no reply, ``updated_at`` not bumped) and the
  first attempt's messages are returned.
* Conflict is the partial unique index "one streaming row per conversation":
  the reply insert fails, and with it the whole post (user message too).
* On PostgreSQL a post's writes are ONE statement (``_POST_TO_NEW``), atomic
  on its own: no BEGIN and COMMIT round trips. It first locks (or creates) the
  conversation row, so concurrent posts to one conversation queue up there; a
  racing duplicate's user insert waits for the winner's and does nothing.
  SQLite takes the same steps one by one in a transaction.
* Checkpoints of concurrent replies share one statement (``checkpoints.py``).
* On SQLite there is one writer at a time: writes in this process queue on an
  ``asyncio.Lock`` (no busy-wait, no "database is locked"); writers in other
  processes are kept apart by ``BEGIN IMMEDIATE`` and the busy timeout.
  Reads run on other pooled connections, concurrently (WAL).

Every query of a fixed shape is compiled once per store (``statements.py``:
peewee generates the text, each call only binds its values), and rows are
read as tuples straight into records, never as model instances.

Every connectivity failure leaves as :class:`Unavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

import orjson
import peewee
from peewee_async.databases import AioDatabase, FetchResults

from ..core.errors import Conflict, Interrupted, NotFound, Unavailable
from ..core.ports import MessageStore, Posted, new_conversation_id
from ..core.records import Conversation, ErrorInfo, Message, Role, Status, Usage, title_from, utcnow
from .checkpoints import CheckpointQueue, TakeBatch
from .database import connect_database, parse_url, unavailable_on_failure, unreachable
from .memory import REPLY_AFTER
from .models import MODELS, ConversationRow, MessageRow, schema_statements
from .statements import Param, Statement, compile_query, compile_text

__all__ = ["SqlMessageStore", "open_store"]

#: history() reads newest-first in pages of this many rows until the budget is spent
_HISTORY_PAGE = 200
#: any constant works; it only has to be the same in every process
_MIGRATE_LOCK_KEY = 0x5A_C4A7
#: every table, then every index, that migrate() creates
_RELATIONS = tuple(
    [model._meta.table_name for model in MODELS]
    + [index._name for model in MODELS for index in model._meta.fields_to_index()]
)


async def _rowcount(database: AioDatabase, cursor: Any) -> int:
    return int(cursor.rowcount)


async def _fetchone(database: AioDatabase, cursor: Any) -> Any:
    return await cursor.fetchone()


async def _fetchall(database: AioDatabase, cursor: Any) -> list[Any]:
    rows: list[Any] = await cursor.fetchall()
    return rows


# --------------------------------------------------------------------------- rows

#: a Conversation's columns, in the order _conversation unpacks them
_CONVERSATION_COLUMNS = (
    ConversationRow.id,
    ConversationRow.owner,
    ConversationRow.title,
    ConversationRow.model,
    ConversationRow.created_at,
    ConversationRow.updated_at,
)
#: a Message's columns, in the order _message unpacks them
_MESSAGE_COLUMNS = (
    MessageRow.id,
    MessageRow.conversation,
    MessageRow.role,
    MessageRow.content,
    MessageRow.status,
    MessageRow.model,
    MessageRow.reply_to,
    MessageRow.client_id,
    MessageRow.input_tokens,
    MessageRow.output_tokens,
    MessageRow.finish_reason,
    MessageRow.error_code,
    MessageRow.error_message,
    MessageRow.created_at,
    MessageRow.completed_at,
)
#: the same, as column names (the hand-written post statement reads them)
_HISTORY_COLUMNS = tuple(c.column_name for c in _MESSAGE_COLUMNS)
# Both drivers return the text and integer columns as str / int / None, which is
# what those fields' python_value makes of them; only the timestamps (all
# UtcDateTimeField) need converting.
_utc = MessageRow.created_at.python_value


def _conversation(row: Sequence[Any]) -> Conversation:
    id_, owner, title, model, created_at, updated_at = row
    return Conversation(id_, owner, title, model, _utc(created_at), _utc(updated_at))


def _message(row: Sequence[Any]) -> Message:
    (
        id_,
        conversation_id,
        role,
        content,
        status,
        model,
        reply_to,
        client_id,
        input_tokens,
        output_tokens,
        finish_reason,
        error_code,
        error_message,
        created_at,
        completed_at,
    ) = row
    usage = None
    if input_tokens is not None or output_tokens is not None:
        usage = Usage(input_tokens, output_tokens)
    error = None
    if error_code is not None:
        error = ErrorInfo(error_code, error_message or "")
    return Message(
        id=id_,
        conversation_id=conversation_id,
        role=cast(Role, role),  # only this module writes these columns
        content=content,
        status=cast(Status, status),
        model=model,
        created_at=_utc(created_at),
        completed_at=None if completed_at is None else _utc(completed_at),
        reply_to=reply_to,
        client_id=client_id,
        usage=usage,
        finish_reason=finish_reason,
        error=error,
    )


def _fill(
    kept: list[Message], used: int, newest_first: Iterable[Message], max_chars: int
) -> tuple[int, bool]:
    """Add messages to a context being built newest first, while they fit in
    ``max_chars`` (the first is always kept; empty replies are skipped); stop
    at the first that does not fit, so the context is a contiguous suffix.
    Returns the characters used and whether one did not fit."""
    for message in newest_first:
        if message.role == "assistant" and not message.content:
            continue
        if kept and used + len(message.content) > max_chars:
            return used, True
        kept.append(message)
        used += len(message.content)
    return used, False


# --------------------------------------------------------------------------- queries


def _before(*, inclusive: bool) -> Any:
    """Rows ordered before (``created_at``, ``id``) -- the key every message list sorts on."""
    same_moment = MessageRow.created_at == Param("created_at")
    tie = MessageRow.id <= Param("id") if inclusive else MessageRow.id < Param("id")
    return (MessageRow.created_at < Param("created_at")) | (same_moment & tie)


_db_time = MessageRow.created_at.db_value

# PostgreSQL: a post's writes as ONE statement -- atomic on its own (autocommit),
# one round trip instead of five (BEGIN, conversation, user message, reply, COMMIT).
# Data-modifying CTEs, which peewee cannot express; the tables are found on the
# connection's search_path, as peewee's own queries find them. Each CTE reads
# the one before it, which fixes their order: lock (or create) the
# conversation, insert the user message unless its client_id was seen, insert
# the reply only if the user message went in, bump updated_at only then.
#
# * Not found: ``conversation_row`` is empty (missing, or another owner's), so
#   nothing else is written and no row comes back.
# * Seen before: the user insert does nothing, so neither does the rest (no
#   reply, ``updated_at`` not bumped); the last column says so.
# * Conflict: the reply insert hits ``message_one_streaming`` and the whole
#   statement -- user message, conversation and all -- fails.
# * The lock (FOR NO KEY UPDATE, the one an UPDATE takes) queues concurrent
#   posts to one conversation on its row; a racing duplicate's user insert, and
#   a racing post's reply insert, wait for the winner's commit either way.
_POST_WRITES = """
user_row AS (
    INSERT INTO message
        (id, conversation_id, role, content, status, model, client_id, created_at, completed_at)
    SELECT {user_id}, id, 'user', {content}, 'complete', {model}, {client_id}, {now}, {now}
    FROM conversation_row
    ON CONFLICT (conversation_id, client_id) DO NOTHING
    RETURNING id
), reply_row AS (
    INSERT INTO message
        (id, conversation_id, role, content, status, model, reply_to, node_id, lease_until,
         created_at)
    SELECT {reply_id}, {conversation_id}, 'assistant', '', 'streaming', {model}, id, {node_id},
        {lease_until}, {reply_at}
    FROM user_row
), bumped AS (
    UPDATE conversation SET updated_at = {now}
    WHERE id = {conversation_id}
        AND EXISTS (SELECT 1 FROM user_row) AND EXISTS (SELECT 1 FROM existing)
)
"""
# The row a post returns: the conversation as it stands after the post, whether
# the user message went in, and the context for the reply read in the same
# statement (saving a round trip, and a turn of the event loop, before the
# reply can start) -- with whether that read can be trusted. One statement
# reads one snapshot, taken before it waited for the conversation's lock, so
# it is trusted only when nothing changed in the conversation meanwhile:
#
# * ``fresh``: the conversation's updated_at in the snapshot is the one the
#   lock found (a post committed in between bumped it);
# * no message in the page is still ``streaming`` (a reply that finished in
#   between reads at its last checkpoint in the snapshot; the reply insert
#   succeeding means it did finish).
#
# Otherwise the history is read again after the post, as it always was.
# Messages are final once not streaming, so a trusted page is exact.
_POST_TO_EXISTING_RESULT = (
    """
SELECT id, owner, title, model, created_at, updated_at, EXISTS (SELECT 1 FROM user_row),
    updated_at = (SELECT c.updated_at FROM conversation c WHERE c.id = {conversation_id}),
    (SELECT json_agg(json_build_array("""
    + ", ".join(f"h.{c}" for c in _HISTORY_COLUMNS)
    + """) ORDER BY h.created_at DESC, h.id DESC)
     FROM history h)::text
FROM conversation_row
"""
)
# A first message's context is the message itself, when this statement made
# the conversation (nothing else can be in it); when it found one, the
# history is read after the post.
_POST_TO_NEW_RESULT = """
SELECT id, owner, title, model, created_at, updated_at, EXISTS (SELECT 1 FROM user_row),
    EXISTS (SELECT 1 FROM created), NULL
FROM conversation_row
"""
_EXISTING = """existing AS (
    SELECT id, owner, title, model, created_at, updated_at
    FROM conversation
    WHERE id = {conversation_id} AND owner = {owner}
    FOR NO KEY UPDATE
)"""
#: the newest page of the conversation before the new user message (which
#: this statement's snapshot cannot see: the post adds it in front)
_HISTORY = (
    """
history AS (
    SELECT """
    + ", ".join(_HISTORY_COLUMNS)
    + """
    FROM message
    WHERE conversation_id = {conversation_id}
        AND (created_at < {now} OR (created_at = {now} AND id < {user_id}))
    ORDER BY created_at DESC, id DESC
    LIMIT """
    + str(_HISTORY_PAGE - 1)
    + """
),"""
)
_POST_TO_EXISTING = (
    "WITH "
    + _EXISTING
    + ", conversation_row AS (SELECT * FROM existing),"
    + _HISTORY
    + _POST_WRITES
    + _POST_TO_EXISTING_RESULT
)
# A first message: the conversation is created or -- a retry -- found. At
# most one of the two CTEs yields it (a row inserted by this statement is not
# visible to its own SELECT); a found one is bumped like any other. If a
# racing first post committed the conversation after this statement's
# snapshot was taken, neither yields it: no row comes back, and the post runs
# again as _POST_TO_EXISTING, whose snapshot sees it.
_POST_TO_NEW = (
    """WITH created AS (
    INSERT INTO conversation (id, owner, title, model, created_at, updated_at)
    VALUES ({conversation_id}, {owner}, {title}, {model}, {now}, {now})
    ON CONFLICT (id) DO NOTHING
    RETURNING id, owner, title, model, created_at, updated_at
), """
    + _EXISTING
    + """, conversation_row AS (
    SELECT * FROM created
    UNION ALL
    SELECT * FROM existing
),"""
    + _POST_WRITES
    + _POST_TO_NEW_RESULT
)

# Checkpoints, a batch in one statement (checkpoints.py). Conditional on
# status = 'streaming': a reply that finish() finalized is never overwritten,
# even by a batch that was already running when finish committed (PostgreSQL
# rechecks the condition on the row's newest version).
_POSTGRES_CHECKPOINTS = """
UPDATE message SET content = batch.content
FROM unnest({ids}::text[], {contents}::text[]) AS batch (id, content)
WHERE message.id = batch.id AND message.status = 'streaming'
"""
# SQLite (UPDATE ... FROM: 3.33+) has no arrays to bind: the batch is a VALUES
# list of (id, content) pairs, its text made for each batch size (bound
# values, not JSON, which would cut a content at its first NUL).
_SQLITE_CHECKPOINTS = """
UPDATE message SET content = batch.column2
FROM (VALUES %s) AS batch
WHERE message.id = batch.column1 AND message.status = 'streaming'
"""
#: rows per SQLite statement, well under its limit of bound values (32766)
_SQLITE_CHECKPOINT_ROWS = 1000


@functools.lru_cache(maxsize=64)
def _sqlite_checkpoints(rows: int) -> str:
    return _SQLITE_CHECKPOINTS % ", ".join(["(?, ?)"] * rows)


class _Statements:
    """Every query of a fixed shape, compiled for one database.

    The names of their :class:`Param` placeholders are the keyword arguments
    of :meth:`SqlMessageStore._run`.
    """

    def __init__(self, database: peewee.Database) -> None:
        def compiled(query: peewee.Node) -> Statement:
            return compile_query(database, query)

        owned = (ConversationRow.id == Param("conversation_id")) & (
            ConversationRow.owner == Param("owner")
        )
        conversations = ConversationRow.select(*_CONVERSATION_COLUMNS)
        messages = MessageRow.select(*_MESSAGE_COLUMNS)
        new_conversation = ConversationRow.insert(
            id=Param("conversation_id"),
            owner=Param("owner"),
            title=Param("title"),
            model=Param("model"),
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

        # posting: one statement on PostgreSQL (the SQLite store takes the steps one by one)
        times = {name: _db_time for name in ("now", "lease_until", "reply_at")}
        self.post_to_new = compile_text(database, _POST_TO_NEW, times)
        self.post_to_existing = compile_text(database, _POST_TO_EXISTING, times)
        self.insert_conversation_if_new = compiled(
            new_conversation.on_conflict(conflict_target=[ConversationRow.id], action="nothing")
        )
        self.touch_conversation = compiled(
            ConversationRow.update(updated_at=Param("now"))
            .where(owned)
            .returning(*_CONVERSATION_COLUMNS)
        )
        self.insert_user = compiled(
            MessageRow.insert(
                id=Param("id"),
                conversation=Param("conversation_id"),
                role="user",
                content=Param("content"),
                status="complete",
                model=Param("model"),
                client_id=Param("client_id"),
                created_at=Param("now"),
                completed_at=Param("now"),
            ).on_conflict(
                conflict_target=[MessageRow.conversation, MessageRow.client_id],
                action="nothing",
            )
        )
        self.insert_reply = compiled(
            MessageRow.insert(
                id=Param("id"),
                conversation=Param("conversation_id"),
                role="assistant",
                content="",
                status="streaming",
                model=Param("model"),
                reply_to=Param("reply_to"),
                node_id=Param("node_id"),
                lease_until=Param("lease_until"),
                created_at=Param("created_at"),
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
                .limit(_HISTORY_PAGE)
            )
            for inclusive in (True, False)
        )

        # replies
        streaming = MessageRow.status == "streaming"
        self.checkpoints = compile_text(database, _POSTGRES_CHECKPOINTS)  # SQLite: see there
        self.finish = compiled(
            MessageRow.update(
                content=Param("content"),
                status=Param("status"),
                input_tokens=Param("input_tokens"),
                output_tokens=Param("output_tokens"),
                finish_reason=Param("finish_reason"),
                error_code=Param("error_code"),
                error_message=Param("error_message"),
                completed_at=Param("now"),
            )
            .where((MessageRow.id == Param("id")) & streaming)
            .returning(*_MESSAGE_COLUMNS)
        )
        interrupt = MessageRow.update(
            status="interrupted",
            completed_at=Param("now"),
            error_code=Interrupted.code,
            error_message=Interrupted.default_message(),
        )
        expired = MessageRow.lease_until.is_null() | (MessageRow.lease_until < Param("before"))
        self.interrupt_node, self.interrupt_expired = (
            compiled(interrupt.where(streaming & orphaned).returning(*_MESSAGE_COLUMNS))
            for orphaned in (MessageRow.node_id == Param("node_id"), expired)
        )


# --------------------------------------------------------------------------- plumbing


@contextlib.contextmanager
def _stale_poll_is_unavailable(where: str | None) -> Iterator[None]:
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
        raise Unavailable() from unreachable(ConnectionError("connection lost"), where)


@dataclass(slots=True)
class _Session:
    #: the SQLite write lock, while this session holds it
    write_lock: asyncio.Lock | None = None

    def unlock(self) -> None:
        """Let other writers in (SQLite) while this session goes on reading."""
        if self.write_lock is not None:
            lock, self.write_lock = self.write_lock, None
            lock.release()


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
        where: str | None = None,
    ) -> None:
        self._db = database
        #: the server, as failures name it (``host:port``; see database.Unreachable)
        self._where = where
        self.backend = backend
        #: the PostgreSQL schema holding the tables (None: the default search_path)
        self.schema = schema
        self._sqlite = backend == "sqlite"
        self._sql = _Statements(database)
        self._write_lock = asyncio.Lock()
        # A FIFO queue in front of the pool, as large as the pool: the pool
        # never has waiters, and the queue here is fair. (aiopg's pool let a
        # task that just released a connection take it straight back ahead of
        # the waiters, which starved some posts for seconds under load.)
        self._connections = asyncio.Semaphore(connections)
        self._checkpoints = CheckpointQueue(self._write_checkpoints)
        self._closed = False

    # ------------------------------------------------------------------ plumbing

    @contextlib.asynccontextmanager
    async def _session(self, *, write: bool) -> AsyncIterator[_Session]:
        """One pooled connection for the block (every query in it uses it), with
        every connectivity failure translated. Always taken in the same order --
        the SQLite write lock, a connection slot, the connection -- so no cycle;
        letting go of the lock early (:meth:`_Session.unlock`) waits for nothing."""
        if self._closed:
            raise Unavailable("the store is closed")
        session = _Session()
        with unavailable_on_failure(self._where), _stale_poll_is_unavailable(self._where):
            try:
                if write and self._sqlite:
                    await self._write_lock.acquire()
                    session.write_lock = self._write_lock
                async with self._connections, self._db.aio_connection():
                    yield session
            finally:
                session.unlock()

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[_Transaction]:
        """A transaction on the session's connection (inside ``_session(write=True)``)."""
        # IMMEDIATE takes SQLite's write lock up front: a deferred transaction
        # that reads first may fail to upgrade ("database is locked") with no retry.
        await self._db.aio_execute_sql("BEGIN IMMEDIATE" if self._sqlite else "BEGIN")
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

    async def _run(self, statement: Statement, fetch: FetchResults, /, **values: Any) -> Any:
        """Execute a compiled statement with ``values`` for its placeholders."""
        return await self._db.aio_execute_sql(statement.sql, statement.bind(values), fetch)

    # ------------------------------------------------------------------ lifecycle

    async def migrate(self) -> None:
        """Create the schema (PostgreSQL), tables and indices that are missing.

        Safe to run again and from several processes at once (every worker of
        every node starting together): everything is ``IF NOT EXISTS``, in one
        transaction, serialized by an advisory lock on PostgreSQL (concurrent
        ``CREATE ... IF NOT EXISTS`` can still collide there) and by ``BEGIN
        IMMEDIATE`` on SQLite. On PostgreSQL an up-to-date schema is left
        untouched, without the lock: ``CREATE INDEX IF NOT EXISTS`` locks its
        table against writes before it finds the index there, which a node
        starting next to busy ones must not do.
        """
        async with self._session(write=True):
            if not self._sqlite and not await self._missing_relations():
                return
            async with self._transaction():
                if not self._sqlite:
                    await self._db.aio_execute_sql(
                        "SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK_KEY,), _fetchone
                    )
                    if self.schema is not None:
                        # the name is a checked identifier (database.parse_url)
                        await self._db.aio_execute_sql(
                            f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'
                        )
                for sql, params in schema_statements(self._db):
                    await self._db.aio_execute_sql(sql, params)

    async def missing_schema(self) -> list[str]:
        """The tables and indices :meth:`migrate` would create; empty when the
        schema is up to date. Raises :class:`Unavailable` like any query."""
        async with self._session(write=False):
            return await self._missing_relations()

    async def _missing_relations(self) -> list[str]:
        if self._sqlite:
            rows = await self._db.aio_execute_sql(
                "SELECT name FROM sqlite_master WHERE type IN ('table', 'index')", (), _fetchall
            )
            present = {row[0] for row in rows}
            return [name for name in _RELATIONS if name not in present]
        # to_regclass finds a bare name on the search_path (the URL's schema)
        rows = await self._db.aio_execute_sql(
            "SELECT name FROM unnest(%s::text[]) AS name"
            " WHERE to_regclass(quote_ident(name)) IS NULL",
            (list(_RELATIONS),),
            _fetchall,
        )
        return [row[0] for row in rows]

    async def ping(self) -> None:
        async with self._session(write=False):
            await self._db.aio_execute_sql("SELECT 1", None, _fetchone)

    async def close(self) -> None:
        if self._closed:
            return
        # Checkpoints already asked for are written first (or fail), so none waits forever.
        await self._checkpoints.aclose()
        if self._closed:  # a concurrent close() got here first
            return
        self._closed = True
        with unavailable_on_failure(self._where):
            await self._db.aio_close()

    # ------------------------------------------------------------------ conversations

    async def create_conversation(
        self, owner: str, *, title: str | None = None, model: str | None = None
    ) -> Conversation:
        now = utcnow()
        conversation = Conversation(str(uuid.uuid4()), owner, title, model, now, now)
        async with self._session(write=True):
            await self._run(
                self._sql.insert_conversation,
                _rowcount,
                conversation_id=conversation.id,
                owner=owner,
                title=title,
                model=model,
                now=now,
            )
        return conversation

    async def get_conversation(self, owner: str, conversation_id: str) -> Conversation | None:
        async with self._session(write=False):
            rows = await self._run(
                self._sql.get_conversation, _fetchall, conversation_id=conversation_id, owner=owner
            )
        return _conversation(rows[0]) if rows else None

    async def list_conversations(
        self, owner: str, *, limit: int = 50, before: datetime | None = None
    ) -> list[Conversation]:
        if limit <= 0:
            return []
        statement = self._sql.list_conversations
        if before is not None:
            statement = self._sql.list_conversations_before
        async with self._session(write=False):
            rows = await self._run(statement, _fetchall, owner=owner, before=before, limit=limit)
        return [_conversation(row) for row in rows]

    async def delete_conversation(self, owner: str, conversation_id: str) -> bool:
        # Its messages go with it: ON DELETE CASCADE (foreign_keys=ON on SQLite).
        async with self._session(write=True):
            deleted = await self._run(
                self._sql.delete_conversation,
                _rowcount,
                conversation_id=conversation_id,
                owner=owner,
            )
        return bool(deleted > 0)

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
        history_max_chars: int | None = None,
    ) -> Posted:
        now = utcnow()
        user_id, reply_id = str(uuid.uuid4()), str(uuid.uuid4())
        new, title = conversation_id is None, None
        if conversation_id is None:
            # Derived: a retry (or a racing duplicate) finds the first attempt's row.
            conversation_id = new_conversation_id(owner, client_id)
            title = title_from(content)
        values: dict[str, Any] = {
            "owner": owner,
            "conversation_id": conversation_id,
            "title": title,
            "client_id": client_id,
            "content": content,
            "model": model,
            "user_id": user_id,
            "reply_id": reply_id,
            "node_id": node_id,
            "lease_until": lease_until,
            "now": now,
            "reply_at": now + REPLY_AFTER,
        }
        #: the messages before this one, newest first, when the post read them
        earlier: list[Message] | None = None
        async with self._session(write=True) as session:
            if self._sqlite:
                conversation = await self._write_post_sqlite(new=new, **values)
            else:
                conversation, earlier = await self._write_post_postgres(new=new, **values)
            # Committed (or nothing written): what follows only reads.
            session.unlock()
            if conversation is None:
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
            history = None
            if history_max_chars is not None:
                if earlier is not None and len(earlier) < _HISTORY_PAGE - 1:
                    kept: list[Message] = []
                    _fill(kept, 0, [user, *earlier], history_max_chars)
                    history = self._oldest_first(kept, user)
                else:  # not read with the post, or more than a page to go through
                    history = await self._history(conversation_id, user, history_max_chars)
        return Posted(conversation, user, reply, created=True, history=history)

    async def _write_post_postgres(
        self, *, new: bool, **values: Any
    ) -> tuple[Conversation | None, list[Message] | None]:
        """A post's writes on PostgreSQL, in one statement (see _POST_TO_NEW): the
        conversation as it stands after the post (None if the client_id was
        seen), and the messages before the new one, newest first, when the
        statement could read them (see _POST_TO_EXISTING_RESULT)."""
        try:
            rows = await self._run(
                self._sql.post_to_new if new else self._sql.post_to_existing, _fetchall, **values
            )
            if not rows and new:  # a racing first post created it: see _POST_TO_NEW
                rows = await self._run(self._sql.post_to_existing, _fetchall, **values)
        except peewee.IntegrityError:
            # The only unique key the statement can hit is message_one_streaming.
            raise Conflict("a reply is already running in this conversation") from None
        if not rows:
            raise NotFound("conversation not found")
        *columns, inserted, trusted, page = rows[0]
        if not inserted:
            return None, None
        # updated_at is now: the conversation was just created, or just bumped
        id_, owner, title, model, created_at, _ = columns
        conversation = Conversation(id_, owner, title, model, _utc(created_at), values["now"])
        earlier = None
        if trusted:
            earlier = [] if page is None else [_message(row) for row in orjson.loads(page)]
            if any(message.status == "streaming" for message in earlier):
                earlier = None  # read at a checkpoint: see _POST_TO_EXISTING_RESULT
        return conversation, earlier

    async def _write_post_sqlite(
        self,
        *,
        new: bool,
        owner: str,
        conversation_id: str,
        title: str | None,
        model: str,
        now: datetime,
        **values: Any,
    ) -> Conversation | None:
        """A post's writes on SQLite, step by step in one transaction (the writer
        holds the write lock: nothing can interleave): the conversation as it
        stands after the post, or None if the client_id was seen."""
        async with self._transaction() as tx:
            conversation = None
            if new and await self._run(
                self._sql.insert_conversation_if_new,
                _rowcount,
                conversation_id=conversation_id,
                owner=owner,
                title=title,
                model=model,
                now=now,
            ):
                conversation = Conversation(conversation_id, owner, title, model, now, now)
            if conversation is None:
                # Checks ownership and bumps updated_at (undone if seen before).
                touched = await self._run(
                    self._sql.touch_conversation,
                    _fetchall,
                    conversation_id=conversation_id,
                    owner=owner,
                    now=now,
                )
                if not touched:
                    raise NotFound("conversation not found")
                conversation = _conversation(touched[0])

            inserted = await self._run(
                self._sql.insert_user,
                _rowcount,
                id=values["user_id"],
                conversation_id=conversation_id,
                content=values["content"],
                model=model,
                client_id=values["client_id"],
                now=now,
            )
            if not inserted:
                tx.rollback_only = True
                return None
            try:
                await self._run(
                    self._sql.insert_reply,
                    _rowcount,
                    id=values["reply_id"],
                    conversation_id=conversation_id,
                    model=model,
                    reply_to=values["user_id"],
                    node_id=values["node_id"],
                    lease_until=values["lease_until"],
                    created_at=values["reply_at"],
                )
            except peewee.IntegrityError:
                # The only unique key this row can hit is message_one_streaming.
                raise Conflict("a reply is already running in this conversation") from None
        return conversation

    async def _seen_before(self, owner: str, conversation_id: str, client_id: str) -> Posted:
        """The idempotent answer: what the first post with ``client_id`` stored (in a session)."""
        conversations = await self._run(
            self._sql.get_conversation, _fetchall, conversation_id=conversation_id, owner=owner
        )
        users = await self._run(
            self._sql.user_by_client_id,
            _fetchall,
            conversation_id=conversation_id,
            client_id=client_id,
        )
        if not conversations or not users:  # deleted in between
            raise NotFound("conversation not found")
        user = _message(users[0])
        replies = await self._run(self._sql.first_reply, _fetchall, user_id=user.id)
        reply = _message(replies[0]) if replies else None
        return Posted(_conversation(conversations[0]), user, reply, created=False)

    # ------------------------------------------------------------------ reading

    async def get_message(self, owner: str, message_id: str) -> Message | None:
        async with self._session(write=False):
            rows = await self._run(self._sql.get_message, _fetchall, id=message_id, owner=owner)
        return _message(rows[0]) if rows else None

    async def list_messages(
        self, owner: str, conversation_id: str, *, limit: int = 50, before: str | None = None
    ) -> list[Message] | None:
        async with self._session(write=False):
            owned = await self._run(
                self._sql.conversation_is_owned,
                _fetchall,
                conversation_id=conversation_id,
                owner=owner,
            )
            if not owned:
                return None
            if limit <= 0:
                return []
            if before is None:
                rows = await self._run(
                    self._sql.list_messages, _fetchall, conversation_id=conversation_id, limit=limit
                )
            else:
                anchors = await self._run(
                    self._sql.anchor, _fetchall, id=before, conversation_id=conversation_id
                )
                if not anchors:
                    return []
                anchor_id, anchor_created_at = anchors[0]
                rows = await self._run(
                    self._sql.list_messages_before,
                    _fetchall,
                    conversation_id=conversation_id,
                    created_at=_utc(anchor_created_at),
                    id=anchor_id,
                    limit=limit,
                )
        return [_message(row) for row in reversed(rows)]

    async def history(
        self, conversation_id: str, *, before: Message, max_chars: int
    ) -> list[Message]:
        async with self._session(write=False):
            return await self._history(conversation_id, before, max_chars)

    async def _history(
        self, conversation_id: str, before: Message, max_chars: int
    ) -> list[Message]:
        """:meth:`history`, in a session."""
        kept: list[Message] = []
        used = 0
        statement, anchor = self._sql.history_first, before
        while True:
            rows = await self._run(
                statement,
                _fetchall,
                conversation_id=conversation_id,
                created_at=anchor.created_at,
                id=anchor.id,
            )
            used, full = _fill(kept, used, map(_message, rows), max_chars)
            if full or len(rows) < _HISTORY_PAGE:
                return self._oldest_first(kept, before)
            statement, anchor = self._sql.history_next, _message(rows[-1])

    @staticmethod
    def _oldest_first(kept: list[Message], before: Message) -> list[Message]:
        if not kept:  # ``before`` is not (or no longer) stored: it is still the context
            kept = [before]
        kept.reverse()
        return kept

    # ------------------------------------------------------------------ replies

    async def checkpoint(self, message_id: str, content: str) -> None:
        # Concurrent calls share one write (checkpoints.py states the invariants).
        if self._closed:
            raise Unavailable("the store is closed")
        self._check_storable(content)
        await self._checkpoints.checkpoint(message_id, content)

    def _check_storable(self, content: str) -> None:
        """Raise what the driver would raise for ``content``, to this caller
        alone: one unstorable text must not fail a whole batch, every interval."""
        if not content.isascii():
            content.encode()  # a lone surrogate: UnicodeEncodeError, as both drivers raise
        if not self._sqlite and "\x00" in content:
            raise ValueError("A string literal cannot contain NUL (0x00) characters.")

    async def _write_checkpoints(self, take_batch: TakeBatch) -> None:
        """One batch of checkpoints, in one statement: see _POSTGRES_CHECKPOINTS."""
        async with self._session(write=True):
            batch = take_batch()  # only now: calls made while we waited go in too
            if self._sqlite:
                # Chunks commit one by one: if one fails, every caller gets the
                # error, including some whose content went in (they retry).
                pairs = [value for pair in batch.items() for value in pair]
                for start in range(0, len(pairs), 2 * _SQLITE_CHECKPOINT_ROWS):
                    chunk = pairs[start : start + 2 * _SQLITE_CHECKPOINT_ROWS]
                    sql = _sqlite_checkpoints(len(chunk) // 2)
                    await self._db.aio_execute_sql(sql, chunk, _rowcount)
            else:
                # Batches never overlap (one writer per store, and a reply is
                # checkpointed by its own node only); should one ever deadlock
                # with a multi-row renew_leases, PostgreSQL aborts one of the two,
                # which is retried next interval (the batch's callers see Unavailable).
                ids, contents = list(batch), list(batch.values())
                await self._run(self._sql.checkpoints, _rowcount, ids=ids, contents=contents)

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
            rows = await self._run(
                self._sql.finish,
                _fetchall,
                id=message_id,
                content=content,
                status=status,
                input_tokens=usage.input_tokens if usage else None,
                output_tokens=usage.output_tokens if usage else None,
                finish_reason=finish_reason,
                error_code=error.code if error else None,
                error_message=error.message if error else None,
                now=utcnow(),
            )
            if not rows:
                rows = await self._run(self._sql.message, _fetchall, id=message_id)
        if not rows:
            raise NotFound("message not found")
        return _message(rows[0])

    async def renew_leases(self, node_id: str, message_ids: Sequence[str], until: datetime) -> None:
        if not message_ids:
            return
        # Not compiled: its shape varies with the number of ids (and it runs
        # every lease_s / 3 per node, not per message).
        async with self._session(write=True):
            await self._db.aio_execute(
                MessageRow.update(lease_until=until).where(
                    MessageRow.id.in_(list(message_ids))
                    & (MessageRow.node_id == node_id)
                    & (MessageRow.status == "streaming")
                ),
                _rowcount,
            )

    async def interrupt_orphans(
        self, *, now: datetime, node_id: str | None = None
    ) -> list[Message]:
        # One conditional UPDATE: two nodes sweeping at once interrupt each row once.
        statement = self._sql.interrupt_expired if node_id is None else self._sql.interrupt_node
        async with self._session(write=True):
            rows = await self._run(statement, _fetchall, node_id=node_id, before=now, now=utcnow())
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
        where=parsed.where,
    )


if TYPE_CHECKING:
    _conforms: type[MessageStore] = SqlMessageStore  # mypy checks it against the port
