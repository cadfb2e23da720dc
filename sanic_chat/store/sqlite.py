"""SQLite's hand-written SQL, and the steps of the store that differ on SQLite.

Hand-written SQL is allowed where a benchmark shows it pays (architecture rule
5); this is SQLite's, all of it: the checkpoints of every running reply in one
``UPDATE ... FROM (VALUES ...)`` per thousand replies (SQLite has no arrays to
bind), and migration's check for missing relations. A post takes its steps
one by one in a ``BEGIN IMMEDIATE`` transaction, with the shared queries
(``queries.py``): on one file, one writer at a time, a round trip is a call
into the same process and costs little.

Benchmark: ``python -m benchmarks.store_cost --backend sqlite`` (statements and
CPU per message cycle; ``benchmarks/RESULTS.md``, "Where sanic-chat's CPU
went"). Delete the batched checkpoint when peewee can express ``UPDATE ...
FROM`` a ``VALUES`` list and that benchmark shows no loss with it.

These statements raise only the core's errors: they run inside the store's
session, whose one map (``errors.py``) translates what the driver raises.
Tests: ``tests/store/test_sql.py`` (checkpoint batches, chunks).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from peewee_async.databases import AioDatabase

from ..core.errors import NotFound
from ..core.records import Conversation, Message
from .queries import Queries, fetchall, rowcount, run, transaction
from .rows import to_conversation

__all__ = ["SqliteDialect"]

# UPDATE ... FROM (3.33+): the batch is a VALUES list of (id, content) pairs,
# its text made for each batch size (bound values, not JSON, which would cut a
# content at its first NUL). Conditional on status = 'streaming': a reply that
# finish() finalized is never overwritten.
_CHECKPOINTS = """
UPDATE message SET content = batch.column2
FROM (VALUES %s) AS batch
WHERE message.id = batch.column1 AND message.status = 'streaming'
"""
#: rows per statement, well under SQLite's limit of bound values (32766)
CHECKPOINT_ROWS = 1000


@functools.lru_cache(maxsize=64)
def _checkpoints(rows: int) -> str:
    return _CHECKPOINTS % ", ".join(["(?, ?)"] * rows)


class SqliteDialect:
    """The store's steps on SQLite (see ``sql.py`` for the ``Dialect`` they make)."""

    # One writer at a time: writes in this process queue on the store's
    # asyncio.Lock (no busy-wait, no "database is locked"); writers in other
    # processes are kept apart by BEGIN IMMEDIATE and the busy timeout.
    serialize_writes = True
    # IMMEDIATE takes SQLite's write lock up front: a deferred transaction that
    # reads first may fail to upgrade ("database is locked") with no retry.
    begin = "BEGIN IMMEDIATE"
    stores_nul = True

    def __init__(self, database: AioDatabase, queries: Queries) -> None:
        self._db = database
        self._q = queries

    async def missing_relations(self, relations: tuple[str, ...]) -> list[str]:
        rows = await self._db.aio_execute_sql(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'index')", (), fetchall
        )
        present = {row[0] for row in rows}
        return [name for name in relations if name not in present]

    async def prepare_migration(self) -> None:
        """Nothing: BEGIN IMMEDIATE already keeps other migrations out."""

    async def write_post(
        self, *, new: bool, values: dict[str, Any], sending: Callable[[], None]
    ) -> tuple[Conversation | None, list[Message] | None]:
        """A post's writes, step by step in one transaction (the writer holds the
        write lock: nothing can interleave): the conversation as it stands
        after the post, or None if the client_id was seen. The history is read
        after it (None).

        A step that fails rolls the transaction back (and a connection closed
        mid-transaction loses it): nothing was stored. Only a failing
        ``COMMIT`` leaves that unknown, so ``sending`` is called just before it."""
        db, q = self._db, self._q
        conversation_id, owner, model, now = (
            values["conversation_id"],
            values["owner"],
            values["model"],
            values["now"],
        )
        async with transaction(db, self.begin) as tx:
            conversation = None
            if new and await run(
                db,
                q.insert_conversation_if_new,
                rowcount,
                conversation_id=conversation_id,
                owner=owner,
                title=values["title"],
                model=model,
                now=now,
            ):
                conversation = Conversation(
                    conversation_id, owner, values["title"], model, now, now
                )
            if conversation is None:
                # Checks ownership and bumps updated_at (undone if seen before).
                touched = await run(
                    db,
                    q.touch_conversation,
                    fetchall,
                    conversation_id=conversation_id,
                    owner=owner,
                    now=now,
                )
                if not touched:
                    raise NotFound("conversation not found")
                conversation = to_conversation(touched[0])
            inserted = await run(
                db,
                q.insert_user,
                rowcount,
                id=values["user_id"],
                conversation_id=conversation_id,
                content=values["content"],
                model=model,
                client_id=values["client_id"],
                now=now,
            )
            if not inserted:
                tx.rollback_only = True
                return None, None
            # an IntegrityError here is message_one_streaming: Conflict (errors.py)
            await run(
                db,
                q.insert_reply,
                rowcount,
                id=values["reply_id"],
                conversation_id=conversation_id,
                model=model,
                reply_to=values["user_id"],
                node_id=values["node_id"],
                lease_until=values["lease_until"],
                created_at=values["reply_at"],
            )
            sending()  # the COMMIT follows
        return conversation, None

    async def write_checkpoints(self, batch: dict[str, str]) -> None:
        # Chunks commit one by one: if one fails, every caller gets the error,
        # including some whose content went in (they retry).
        pairs = [value for pair in batch.items() for value in pair]
        for start in range(0, len(pairs), 2 * CHECKPOINT_ROWS):
            chunk = pairs[start : start + 2 * CHECKPOINT_ROWS]
            await self._db.aio_execute_sql(_checkpoints(len(chunk) // 2), chunk, rowcount)
