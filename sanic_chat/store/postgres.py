"""PostgreSQL's hand-written SQL, and the steps of the store that differ on PostgreSQL.

Hand-written SQL is allowed where a benchmark shows it pays (architecture rule
5); this is PostgreSQL's, all of it:

* a post's writes -- and, when it can be trusted, the history for its reply --
  in ONE statement of data-modifying CTEs (``_POST_TO_NEW``,
  ``_POST_TO_EXISTING``), which peewee cannot express: one round trip instead
  of six (``BEGIN``, lock or insert the conversation, user row, reply row,
  ``COMMIT``, the history read);
* the checkpoints of every running reply in one ``UPDATE ... FROM unnest(...)``;
* migration's advisory lock and its check for missing relations.

Benchmark: ``python -m benchmarks.store_cost --backend postgres`` (statements
and CPU per message cycle) and the ``seed`` scenario; ``benchmarks/RESULTS.md``,
"Second pass" (post p50 under a saturated loop 164-178 -> 17.5 ms, checkpoint
p50 134-145 -> 12.7 ms) and "Third pass" (the history read folded into the
post: 2 -> 1 statement). Delete when: peewee can express data-modifying CTEs
and array parameters, and that benchmark shows no loss with its queries.

These statements raise only the core's errors: they run inside the store's
session, whose one map (``errors.py``) translates what the driver raises.
Tests: ``tests/store/test_sql.py`` (one statement per post, the races the
post's snapshot can lose, checkpoint batches).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from peewee_async.databases import AioDatabase

from ..core.errors import NotFound
from ..core.records import Conversation, Message
from .queries import HISTORY_PAGE, Queries, fetchall, fetchone, rowcount, run
from .rows import MESSAGE_COLUMN_NAMES, db_time, to_message, utc
from .statements import compile_text

__all__ = ["PostgresDialect"]

#: any constant works; it only has to be the same in every process
MIGRATE_LOCK_KEY = 0x5A_C4A7

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
    + ", ".join(f"h.{c}" for c in MESSAGE_COLUMN_NAMES)
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
    + ", ".join(MESSAGE_COLUMN_NAMES)
    + """
    FROM message
    WHERE conversation_id = {conversation_id}
        AND (created_at < {now} OR (created_at = {now} AND id < {user_id}))
    ORDER BY created_at DESC, id DESC
    LIMIT """
    + str(HISTORY_PAGE - 1)
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

# Checkpoints, a batch in one statement (checkpoints.py), its ids and contents
# bound as two arrays. Conditional on status = 'streaming': a reply that
# finish() finalized is never overwritten, even by a batch that was already
# running when finish committed (PostgreSQL rechecks the condition on the
# row's newest version).
_CHECKPOINTS = """
UPDATE message SET content = batch.content
FROM unnest({ids}::text[], {contents}::text[]) AS batch (id, content)
WHERE message.id = batch.id AND message.status = 'streaming'
"""


class PostgresDialect:
    """The store's steps on PostgreSQL (see ``sql.py`` for the ``Dialect`` they make)."""

    #: PostgreSQL's own locks keep concurrent writers apart
    serialize_writes = False
    begin = "BEGIN"
    #: a text column cannot hold NUL
    stores_nul = False

    def __init__(self, database: AioDatabase, queries: Queries, schema: str | None) -> None:
        self._db = database
        self._schema = schema
        times = {name: db_time for name in ("now", "lease_until", "reply_at")}
        self._post_to_new = compile_text(database, _POST_TO_NEW, times)
        self._post_to_existing = compile_text(database, _POST_TO_EXISTING, times)
        self._checkpoints = compile_text(database, _CHECKPOINTS)

    async def missing_relations(self, relations: tuple[str, ...]) -> list[str]:
        # to_regclass finds a bare name on the search_path (the URL's schema)
        rows = await self._db.aio_execute_sql(
            "SELECT name FROM unnest(%s::text[]) AS name"
            " WHERE to_regclass(quote_ident(name)) IS NULL",
            (list(relations),),
            fetchall,
        )
        return [row[0] for row in rows]

    async def prepare_migration(self) -> None:
        """First in migrate's transaction: wait for any other process's migration
        (concurrent ``CREATE ... IF NOT EXISTS`` can still collide here), then
        create the URL's schema."""
        await self._db.aio_execute_sql(
            "SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK_KEY,), fetchone
        )
        if self._schema is not None:
            # the name is a checked identifier (url.parse_url)
            await self._db.aio_execute_sql(f'CREATE SCHEMA IF NOT EXISTS "{self._schema}"')

    async def write_post(
        self, *, new: bool, values: dict[str, Any], sending: Callable[[], None]
    ) -> tuple[Conversation | None, list[Message] | None]:
        """A post's writes, in one statement (see _POST_TO_NEW): the
        conversation as it stands after the post (None if the client_id was
        seen), and the messages before the new one, newest first, when the
        statement could read them (see _POST_TO_EXISTING_RESULT).

        The statement commits on its own (autocommit), on the server, whether
        or not its answer reaches us: from the moment it is handed to the
        driver (``sending``), a timeout or a lost connection says nothing
        about whether it was stored."""
        sending()
        rows = await run(
            self._db, self._post_to_new if new else self._post_to_existing, fetchall, **values
        )
        if not rows and new:  # a racing first post created it: see _POST_TO_NEW
            rows = await run(self._db, self._post_to_existing, fetchall, **values)
        if not rows:
            raise NotFound("conversation not found")
        *columns, inserted, trusted, page = rows[0]
        if not inserted:
            return None, None
        # updated_at is now: the conversation was just created, or just bumped
        id_, owner, title, model, created_at, _ = columns
        conversation = Conversation(id_, owner, title, model, utc(created_at), values["now"])
        earlier = None
        if trusted:
            earlier = [] if page is None else [to_message(row) for row in orjson.loads(page)]
            if any(message.status == "streaming" for message in earlier):
                earlier = None  # read at a checkpoint: see _POST_TO_EXISTING_RESULT
        return conversation, earlier

    async def write_checkpoints(self, batch: dict[str, str]) -> None:
        # Batches never overlap (one writer per store, and a reply is
        # checkpointed by its own node only); should one ever deadlock with a
        # multi-row renew_leases, PostgreSQL aborts one of the two, which is
        # retried next interval (the batch's callers see Unavailable).
        await run(
            self._db, self._checkpoints, rowcount, ids=list(batch), contents=list(batch.values())
        )
