"""The SQL :class:`~sanic_chat.core.ports.MessageStore`: peewee queries, peewee-async execution.

The same models and queries run on SQLite (aiosqlite) and PostgreSQL (aiopg).
The semantics are those of ``memory.py`` (the reference; what both share is
in ``semantics.py``); the database adds durability and makes the invariants
hold across processes and nodes:

* Idempotency is the unique key (conversation, client_id): the user message
  is inserted ``ON CONFLICT DO NOTHING``; zero rows inserted means "seen
  before": nothing is written (no reply, ``updated_at`` not bumped) and the
  first attempt's messages are returned.
* Conflict is the partial unique index "one streaming row per conversation":
  the reply insert fails, and with it the whole post (user message too).
* Checkpoints of concurrent replies share one statement (``checkpoints.py``).
* Reads run on pooled connections, concurrently (WAL on SQLite).

Where the dialects differ -- a post's writes, the checkpoint batch, migration
-- a :class:`Dialect` takes the step (``postgres.py``, ``sqlite.py``: their
hand-written SQL); everything else is the shared queries (``queries.py``) and
rows (``rows.py``). Every call runs in a session (:meth:`SqlMessageStore._session`),
which translates every driver exception into the core's errors with one map
(``errors.py``): nothing else leaves the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from peewee_async.databases import AioDatabase

from ..core.errors import NotFound, OutcomeUnknown, Unavailable
from ..core.ports import MessageStore, Posted, new_conversation_id
from ..core.records import Conversation, ErrorInfo, Message, Status, Usage, title_from, utcnow
from .checkpoints import CheckpointQueue, TakeBatch
from .database import connect_database
from .errors import core_errors, unstorable
from .internals import create_statements, relation_names
from .models import MODELS, MessageRow
from .postgres import PostgresDialect
from .queries import HISTORY_PAGE, Queries, fetchall, fetchone, rowcount, run, transaction
from .rows import to_conversation, to_message, utc
from .semantics import REPLY_AFTER, fill_context, oldest_first, posted_messages
from .sqlite import SqliteDialect
from .url import parse_url

__all__ = ["Dialect", "SqlMessageStore", "open_store"]

#: every table, then every index, that migrate() creates
_RELATIONS = relation_names(MODELS)


class Dialect(Protocol):
    """The steps that differ between SQLite and PostgreSQL. Each runs inside a
    session of the store (a pooled connection, errors translated)."""

    #: writes take the store's write lock (one writer at a time)
    serialize_writes: bool
    #: what opens a writing transaction
    begin: str
    #: a text column can hold NUL
    stores_nul: bool

    async def missing_relations(self, relations: tuple[str, ...]) -> list[str]: ...

    async def prepare_migration(self) -> None:
        """First in migrate's transaction, before the ``CREATE`` statements."""

    async def write_post(
        self, *, new: bool, values: dict[str, Any], sending: Callable[[], None]
    ) -> tuple[Conversation | None, list[Message] | None]:
        """A post's writes, committed: the conversation after the post (None:
        the client_id was seen, nothing written) and, when read with them, the
        messages before the new one, newest first. Raises NotFound or Conflict.

        Calls ``sending`` before the step from which a failure no longer
        proves that nothing was written (what is sent may be committed by the
        server after the answer was given up on)."""

    async def write_checkpoints(self, batch: dict[str, str]) -> None: ...


@dataclass(slots=True)
class _Session:
    #: the write lock, while this session holds it
    write_lock: asyncio.Lock | None = None

    def unlock(self) -> None:
        """Let other writers in while this session goes on reading."""
        if self.write_lock is not None:
            lock, self.write_lock = self.write_lock, None
            lock.release()


@dataclass(slots=True)
class _PostAttempt:
    """How far a post's writes got, which decides what a failure tells the client.

    Until the writes are sent, a failure means nothing was stored. From then on
    it does not: a statement whose answer timed out or whose connection broke
    may still be committed by the server (it runs what it received, whoever
    waits), and after the commit the message is stored whatever fails next --
    :class:`OutcomeUnknown`, naming the reply row the post may have made."""

    #: the reply row this post inserts if it commits (None: known not to)
    reply_id: str | None
    #: the writes went out (see ``Dialect.write_post``)
    sent: bool = False

    def sending(self) -> None:
        self.sent = True


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
        #: the server, as failures name it (``host:port``; see errors.Unreachable)
        self._where = where
        self.backend = backend
        #: the PostgreSQL schema holding the tables (None: the default search_path)
        self.schema = schema
        self._q = Queries(database)
        self._dialect: Dialect = (
            SqliteDialect(database, self._q)
            if backend == "sqlite"
            else PostgresDialect(database, self._q, schema)
        )
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
        every driver exception translated. Always taken in the same order --
        the write lock, a connection slot, the connection -- so no cycle;
        letting go of the lock early (:meth:`_Session.unlock`) waits for nothing."""
        if self._closed:
            raise Unavailable("the store is closed")
        session = _Session()
        with core_errors(self._where):
            try:
                if write and self._dialect.serialize_writes:
                    await self._write_lock.acquire()
                    session.write_lock = self._write_lock
                async with self._connections, self._db.aio_connection():
                    yield session
            finally:
                session.unlock()

    async def _run(self, statement: Any, fetch: Any, /, **values: Any) -> Any:
        return await run(self._db, statement, fetch, **values)

    # ------------------------------------------------------------------ lifecycle

    async def migrate(self) -> None:
        """Create the schema (PostgreSQL), tables and indices that are missing.

        Safe to run again and from several processes at once (every worker of
        every node starting together): everything is ``IF NOT EXISTS``, in one
        transaction, serialized by an advisory lock on PostgreSQL (concurrent
        ``CREATE ... IF NOT EXISTS`` can still collide there) and by ``BEGIN
        IMMEDIATE`` on SQLite. An up-to-date schema is left untouched, without
        the lock: ``CREATE INDEX IF NOT EXISTS`` locks its table against
        writes on PostgreSQL before it finds the index there, which a node
        starting next to busy ones must not do.
        """
        async with self._session(write=True):
            if not await self._dialect.missing_relations(_RELATIONS):
                return
            async with transaction(self._db, self._dialect.begin):
                await self._dialect.prepare_migration()
                for sql, params in create_statements(self._db, MODELS):
                    await self._db.aio_execute_sql(sql, params)

    async def missing_schema(self) -> list[str]:
        """The tables and indices :meth:`migrate` would create; empty when the
        schema is up to date. Raises :class:`Unavailable` like any query."""
        async with self._session(write=False):
            return await self._dialect.missing_relations(_RELATIONS)

    async def ping(self) -> None:
        async with self._session(write=False):
            await self._db.aio_execute_sql("SELECT 1", None, fetchone)

    async def close(self) -> None:
        if self._closed:
            return
        # Checkpoints already asked for are written first (or fail), so none waits forever.
        await self._checkpoints.aclose()
        if self._closed:  # a concurrent close() got here first
            return
        self._closed = True
        with core_errors(self._where):
            await self._db.aio_close()

    # ------------------------------------------------------------------ conversations

    async def create_conversation(
        self, owner: str, *, title: str | None = None, model: str | None = None
    ) -> Conversation:
        now = utcnow()
        conversation = Conversation(str(uuid.uuid4()), owner, title, model, now, now)
        async with self._session(write=True):
            await self._run(
                self._q.insert_conversation,
                rowcount,
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
                self._q.get_conversation, fetchall, conversation_id=conversation_id, owner=owner
            )
        return to_conversation(rows[0]) if rows else None

    async def list_conversations(
        self, owner: str, *, limit: int = 50, before: datetime | None = None
    ) -> list[Conversation]:
        if limit <= 0:
            return []
        statement = self._q.list_conversations
        if before is not None:
            statement = self._q.list_conversations_before
        async with self._session(write=False):
            rows = await self._run(statement, fetchall, owner=owner, before=before, limit=limit)
        return [to_conversation(row) for row in rows]

    async def delete_conversation(self, owner: str, conversation_id: str) -> bool:
        # Its messages go with it: ON DELETE CASCADE (foreign_keys=ON on SQLite).
        async with self._session(write=True):
            deleted = await self._run(
                self._q.delete_conversation,
                rowcount,
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
        attempt = _PostAttempt(reply_id)
        try:
            async with self._session(write=True) as session:
                #: the messages before this one, newest first, when the post read them
                conversation, earlier = await self._dialect.write_post(
                    new=new, values=values, sending=attempt.sending
                )
                # Committed (or nothing written): what follows only reads.
                session.unlock()
                if conversation is None:
                    attempt.reply_id = None  # seen before: this post made no reply
                    return await self._seen_before(owner, conversation_id, client_id)
                user, reply = posted_messages(
                    conversation_id=conversation_id,
                    user_id=user_id,
                    reply_id=reply_id,
                    client_id=client_id,
                    content=content,
                    model=model,
                    now=now,
                )
                history = None
                if history_max_chars is not None:
                    if earlier is not None and len(earlier) < HISTORY_PAGE - 1:
                        kept: list[Message] = []
                        fill_context(kept, 0, [user, *earlier], history_max_chars)
                        history = oldest_first(kept, user)
                    else:  # not read with the post, or more than a page to go through
                        history = await self._history(conversation_id, user, history_max_chars)
        except Unavailable as exc:
            if not attempt.sent:
                raise  # nothing went out: nothing was stored
            raise OutcomeUnknown(reply_id=attempt.reply_id) from exc.__cause__
        return Posted(conversation, user, reply, created=True, history=history)

    async def _seen_before(self, owner: str, conversation_id: str, client_id: str) -> Posted:
        """The idempotent answer: what the first post with ``client_id`` stored (in a session)."""
        conversations = await self._run(
            self._q.get_conversation, fetchall, conversation_id=conversation_id, owner=owner
        )
        users = await self._run(
            self._q.user_by_client_id,
            fetchall,
            conversation_id=conversation_id,
            client_id=client_id,
        )
        if not conversations or not users:  # deleted in between
            raise NotFound("conversation not found")
        user = to_message(users[0])
        replies = await self._run(self._q.first_reply, fetchall, user_id=user.id)
        reply = to_message(replies[0]) if replies else None
        return Posted(to_conversation(conversations[0]), user, reply, created=False)

    # ------------------------------------------------------------------ reading

    async def get_message(self, owner: str, message_id: str) -> Message | None:
        async with self._session(write=False):
            rows = await self._run(self._q.get_message, fetchall, id=message_id, owner=owner)
        return to_message(rows[0]) if rows else None

    async def list_messages(
        self, owner: str, conversation_id: str, *, limit: int = 50, before: str | None = None
    ) -> list[Message] | None:
        async with self._session(write=False):
            owned = await self._run(
                self._q.conversation_is_owned,
                fetchall,
                conversation_id=conversation_id,
                owner=owner,
            )
            if not owned:
                return None
            if limit <= 0:
                return []
            if before is None:
                rows = await self._run(
                    self._q.list_messages, fetchall, conversation_id=conversation_id, limit=limit
                )
            else:
                anchors = await self._run(
                    self._q.anchor, fetchall, id=before, conversation_id=conversation_id
                )
                if not anchors:
                    return []
                anchor_id, anchor_created_at = anchors[0]
                rows = await self._run(
                    self._q.list_messages_before,
                    fetchall,
                    conversation_id=conversation_id,
                    created_at=utc(anchor_created_at),
                    id=anchor_id,
                    limit=limit,
                )
        return [to_message(row) for row in reversed(rows)]

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
        statement, anchor = self._q.history_first, before
        while True:
            rows = await self._run(
                statement,
                fetchall,
                conversation_id=conversation_id,
                created_at=anchor.created_at,
                id=anchor.id,
            )
            used, full = fill_context(kept, used, map(to_message, rows), max_chars)
            if full or len(rows) < HISTORY_PAGE:
                return oldest_first(kept, before)
            statement, anchor = self._q.history_next, to_message(rows[-1])

    # ------------------------------------------------------------------ replies

    async def checkpoint(self, message_id: str, content: str) -> None:
        # Concurrent calls share one write (checkpoints.py states the invariants).
        if self._closed:
            raise Unavailable("the store is closed")
        self._check_storable(content)
        await self._checkpoints.checkpoint(message_id, content)

    def _check_storable(self, content: str) -> None:
        """Refuse, to this caller alone, what the driver would refuse for
        ``content``: one unstorable text must not fail a whole batch, every interval."""
        if not content.isascii():
            try:
                content.encode()
            except UnicodeEncodeError as exc:  # a lone surrogate: both drivers refuse it
                raise unstorable() from exc
        if not self._dialect.stores_nul and "\x00" in content:
            raise unstorable()

    async def _write_checkpoints(self, take_batch: TakeBatch) -> None:
        """One batch of checkpoints, in one statement (per dialect)."""
        async with self._session(write=True):
            # only now: calls made while we waited for the connection go in too
            await self._dialect.write_checkpoints(take_batch())

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
                self._q.finish,
                fetchall,
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
                rows = await self._run(self._q.message, fetchall, id=message_id)
        if not rows:
            raise NotFound("message not found")
        return to_message(rows[0])

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
                rowcount,
            )

    async def interrupt_orphans(
        self, *, now: datetime, node_id: str | None = None
    ) -> list[Message]:
        # One conditional UPDATE: two nodes sweeping at once interrupt each row once.
        statement = self._q.interrupt_expired if node_id is None else self._q.interrupt_node
        async with self._session(write=True):
            rows = await self._run(statement, fetchall, node_id=node_id, before=now, now=utcnow())
        orphans = [to_message(row) for row in rows]
        orphans.sort(key=lambda m: (m.created_at, m.id))
        return orphans


async def open_store(url: str, *, schema: str | None = None) -> SqlMessageStore:
    """Open the store at ``url``; see ``url.py`` for the accepted forms.

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
