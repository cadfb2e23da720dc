"""What only the SQL store has: several nodes on one database, URLs, migrations,
unreachable databases, durability, latency (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import peewee
import psycopg2
import pytest

from sanic_chat.core.errors import Conflict, NotFound, Unavailable, ValidationFailed
from sanic_chat.core.ports import MessageStore, new_conversation_id
from sanic_chat.store import open_store
from sanic_chat.store import sqlite as sqlite_dialect
from sanic_chat.store.database import connect_database
from sanic_chat.store.internals import PostgresPool
from sanic_chat.store.sql import SqlMessageStore
from sanic_chat.store.url import parse_url
from tests.conftest import require_postgres

from .support import Stores, post, stores_for

# --------------------------------------------------------------------------- two nodes


async def test_conflict_holds_across_two_nodes_on_one_database(sql_stores: Stores) -> None:
    node_a, node_b = await sql_stores.open(), await sql_stores.open()
    conversation = await node_a.create_conversation("alice")
    first = await post(node_a, conversation_id=conversation.id, node_id="a")
    with pytest.raises(Conflict):
        await post(node_b, conversation_id=conversation.id, node_id="b")
    assert first.reply is not None
    await node_b.finish(first.reply.id, content="done", status="complete")
    assert (await post(node_b, conversation_id=conversation.id, node_id="b")).created


async def test_racing_nodes_start_exactly_one_reply(sql_stores: Stores) -> None:
    nodes = [await sql_stores.open() for _ in range(3)]
    conversation = await nodes[0].create_conversation("alice")
    results = await asyncio.gather(
        *(post(nodes[i % 3], conversation_id=conversation.id) for i in range(12)),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(r, Conflict) for r in results if r is not winners[0])
    assert len(await nodes[1].list_messages("alice", conversation.id) or []) == 2


async def test_racing_nodes_store_a_duplicate_post_once(sql_stores: Stores) -> None:
    nodes = [await sql_stores.open() for _ in range(3)]
    results = await asyncio.gather(*(post(nodes[i % 3], client_id="same") for i in range(12)))
    assert sum(r.created for r in results) == 1
    assert len({(r.conversation.id, r.user.id) for r in results}) == 1
    assert len(await nodes[2].list_messages("alice", results[0].conversation.id) or []) == 2


# --------------------------------------------------------------------------- compiled queries


async def test_a_message_cycle_generates_no_sql_text(
    sql_stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await sql_stores.open()
    generated: list[object] = []
    original = peewee.Context.sql

    def counting(self: peewee.Context, obj: object) -> peewee.Context:
        generated.append(obj)
        return original(self, obj)

    monkeypatch.setattr(peewee.Context, "sql", counting)
    conversation_id = None
    for _ in range(2):  # a new conversation, then an existing one
        posted = await post(store, conversation_id=conversation_id)
        conversation_id = posted.conversation.id
        assert posted.reply is not None
        await store.history(conversation_id, before=posted.user, max_chars=1000)
        await store.checkpoint(posted.reply.id, "Hel")
        await store.finish(posted.reply.id, content="Hello", status="complete")
        await store.interrupt_orphans(now=posted.user.created_at)
    assert generated == []


# --------------------------------------------------------------------------- round trips


class Statements:
    """Every statement a store sends (its database's one way out), and a way to hold
    back or fail the ones that start with some text."""

    def __init__(self, store: SqlMessageStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()
        #: set when a statement is first held back
        self.holding = asyncio.Event()
        self.held = 0
        self.hold: str | None = None
        self.fail: tuple[str, Exception] | None = None
        self._execute = store._db.aio_execute_sql
        monkeypatch.setattr(store._db, "aio_execute_sql", self._spy)

    async def _spy(self, sql: str, params: Any = None, fetch: Any = None) -> Any:
        self.sent.append(sql)
        if self.hold is not None and sql.lstrip().startswith(self.hold):
            self.held += 1
            self.holding.set()
            await self.gate.wait()
        if self.fail is not None and sql.lstrip().startswith(self.fail[0]):
            raise self.fail[1]
        return await self._execute(sql, params, fetch)

    def count(self, prefix: str = "") -> int:
        return sum(sql.lstrip().startswith(prefix) for sql in self.sent)


async def test_a_post_is_one_statement_on_postgres_and_its_history_one_more(
    postgres_stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await postgres_stores.open()
    assert isinstance(store, SqlMessageStore)
    statements = Statements(store, monkeypatch)
    first = await post(store)  # a new conversation
    assert statements.count() == 1
    assert first.reply is not None
    await store.finish(first.reply.id, content="done", status="complete")

    statements.sent.clear()
    second = await post(
        store,
        conversation_id=first.conversation.id,
        client_id="c-2",
        content="again",
        history_max_chars=1000,
    )
    assert statements.count() == 1  # the write reads the history too
    assert second.created and second.history is not None
    assert [m.content for m in second.history] == ["hello", "done", "again"]
    assert second.conversation.updated_at == second.user.created_at
    assert await store.get_conversation("alice", first.conversation.id) == second.conversation
    assert await store.list_messages("alice", first.conversation.id) == [
        first.user,
        await store.get_message("alice", first.reply.id),
        second.user,
        second.reply,
    ]


async def test_racing_duplicates_do_not_bump_the_conversation(sql_stores: Stores) -> None:
    nodes = [await sql_stores.open() for _ in range(3)]
    conversation = await nodes[0].create_conversation("alice")
    results = await asyncio.gather(
        *(post(nodes[i % 3], conversation_id=conversation.id, client_id="same") for i in range(12))
    )
    (winner,) = [r for r in results if r.created]
    stored = await nodes[0].get_conversation("alice", conversation.id)
    assert stored == winner.conversation  # bumped once, by the post that stored something
    assert all(r.conversation == stored for r in results)


@pytest.mark.postgres
async def test_postgres_first_post_racing_its_retry_across_nodes_returns_the_winners_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The retry's statement starts before the first post commits the new
    conversation, so its snapshot cannot see it: it runs again and finds it."""
    stores, admin, app = await _tagged_postgres()
    try:
        store = await stores.open()
        assert isinstance(store, SqlMessageStore)
        conversation_id = new_conversation_id("alice", "c-1")
        with admin.cursor() as cursor:  # the first post, in a transaction still open
            cursor.execute(
                "INSERT INTO conversation VALUES (%s, 'alice', 'hi', 'demo', now(), now())",
                (conversation_id,),
            )
            cursor.execute(
                "INSERT INTO message (id, conversation_id, role, content, status, client_id,"
                " created_at) VALUES ('u-1', %s, 'user', 'hi', 'complete', 'c-1', now())",
                (conversation_id,),
            )
        statements = Statements(store, monkeypatch)
        retry = asyncio.create_task(post(store, client_id="c-1", content="hi"))
        await _until_waiting_on_a_lock(app)
        admin.commit()
        posted = await asyncio.wait_for(retry, timeout=10)
        assert posted.created is False and posted.user.id == "u-1"
        assert posted.conversation.id == conversation_id
        assert len(await store.list_messages("alice", conversation_id) or []) == 1
        assert statements.count("WITH created AS") == 1
        assert statements.count("WITH existing AS") == 1
    finally:
        admin.close()
        await stores.aclose()


@pytest.mark.postgres
async def test_postgres_a_conversation_deleted_under_a_post_is_not_found_and_nothing_stored() -> (
    None
):
    stores, admin, app = await _tagged_postgres()
    try:
        store = await stores.open()
        conversation = await store.create_conversation("alice")
        with admin.cursor() as cursor:
            cursor.execute("DELETE FROM conversation WHERE id = %s", (conversation.id,))
        task = asyncio.create_task(post(store, conversation_id=conversation.id))
        await _until_waiting_on_a_lock(app)
        admin.commit()
        with pytest.raises(NotFound):
            await asyncio.wait_for(task, timeout=10)
        with admin.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM message")
            assert cursor.fetchone() == (0,)
    finally:
        admin.close()
        await stores.aclose()


async def _tagged_postgres() -> tuple[Stores, Any, str]:
    """Stores whose connections carry a unique application_name, and an admin
    connection (in that schema, not autocommit) to race them with."""
    url = require_postgres()
    app = f"store_test_{uuid.uuid4().hex[:12]}"
    tagged = f"{url}{'&' if '?' in url else '?'}application_name={app}"
    stores = Stores("postgres", tagged, f"test_store_{app}")
    await (await stores.open()).close()  # the schema, migrated
    admin = psycopg2.connect(url, connect_timeout=5)
    with admin.cursor() as cursor:
        cursor.execute(f'SET search_path TO "{stores.schema}"')
    admin.commit()
    return stores, admin, app


async def _until_waiting_on_a_lock(app: str, *, terminate: bool = False) -> None:
    """Return once a connection tagged ``app`` waits on a lock (``terminate``: and kill it)."""
    watcher = psycopg2.connect(require_postgres(), connect_timeout=5)
    watcher.autocommit = True
    found = "pg_terminate_backend(pid)" if terminate else "1"
    try:
        with watcher.cursor() as cursor:
            for _ in range(250):
                await asyncio.sleep(0.02)
                cursor.execute(
                    f"SELECT {found} FROM pg_stat_activity "
                    "WHERE application_name = %s AND wait_event_type = 'Lock'",
                    (app,),
                )
                if cursor.fetchall():
                    return
    finally:
        watcher.close()
    pytest.fail("the post never waited on a lock")


# --------------------------------------------------------------------------- checkpoint batches


async def _streaming_replies(store: MessageStore, n: int) -> list[str]:
    replies = [(await post(store)).reply for _ in range(n)]
    return [reply.id for reply in replies if reply is not None]


async def _contents(store: MessageStore, ids: list[str]) -> list[str | None]:
    messages = [await store.get_message("alice", id_) for id_ in ids]
    return [message.content if message else None for message in messages]


async def _replies_watched(
    stores: Stores, monkeypatch: pytest.MonkeyPatch, n: int
) -> tuple[SqlMessageStore, list[str], Statements]:
    """A store with ``n`` streaming replies, and from now on its statements."""
    store = await stores.open()
    assert isinstance(store, SqlMessageStore)
    ids = await _streaming_replies(store, n)
    return store, ids, Statements(store, monkeypatch)


async def test_concurrent_checkpoints_are_one_statement(
    sql_stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, ids, statements = await _replies_watched(sql_stores, monkeypatch, 30)
    await asyncio.gather(*(store.checkpoint(id_, f"partial {i} ✓") for i, id_ in enumerate(ids)))
    assert statements.count() == 1
    assert await _contents(store, ids) == [f"partial {i} ✓" for i in range(30)]


async def test_checkpoints_made_during_a_write_are_the_next_statement(
    sql_stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, ids, statements = await _replies_watched(sql_stores, monkeypatch, 10)
    statements.hold, statements.gate = "UPDATE", asyncio.Event()
    first = asyncio.create_task(store.checkpoint(ids[0], "first"))
    await asyncio.wait_for(statements.holding.wait(), timeout=10)
    later = [asyncio.create_task(store.checkpoint(id_, "later")) for id_ in ids]
    await asyncio.sleep(0.01)
    assert statements.held == 1  # one write in flight at a time
    statements.gate.set()
    await asyncio.gather(first, *later)
    assert statements.count() == 2
    assert await _contents(store, ids) == ["later"] * 10  # the newer content won


async def test_a_checkpoint_batch_leaves_finished_replies_as_they_finished(
    sql_stores: Stores,
) -> None:
    store = await sql_stores.open()
    streaming, finished = await _streaming_replies(store, 2)
    done = await store.finish(finished, content="the end", status="complete")
    await asyncio.gather(store.checkpoint(streaming, "more"), store.checkpoint(finished, "late"))
    assert await store.get_message("alice", finished) == done
    assert await _contents(store, [streaming]) == ["more"]


async def test_a_failed_checkpoint_batch_fails_every_caller_in_it(
    sql_stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, ids, statements = await _replies_watched(sql_stores, monkeypatch, 5)
    lost = (
        sqlite3.OperationalError("disk I/O error")
        if store.backend == "sqlite"
        else psycopg2.OperationalError("server closed the connection unexpectedly")
    )
    statements.fail = ("UPDATE", lost)
    results = await asyncio.gather(
        *(store.checkpoint(id_, "x") for id_ in ids), return_exceptions=True
    )
    assert statements.count() == 1
    assert all(isinstance(r, Unavailable) for r in results), results
    assert await _contents(store, ids) == [""] * 5
    statements.fail = None
    await asyncio.gather(*(store.checkpoint(id_, "y") for id_ in ids))
    assert await _contents(store, ids) == ["y"] * 5


async def test_an_unstorable_checkpoint_fails_alone_and_the_rest_of_its_batch_is_written(
    sql_stores: Stores,
) -> None:
    store = await sql_stores.open()
    assert isinstance(store, SqlMessageStore)
    ids = await _streaming_replies(store, 3)
    nul = "a\x00b"  # PostgreSQL cannot store it; SQLite can, and keeps all of it
    results = await asyncio.gather(
        store.checkpoint(ids[0], "fine"),
        store.checkpoint(ids[1], "lone \ud800 surrogate"),
        store.checkpoint(ids[2], nul),
        return_exceptions=True,
    )
    assert results[0] is None and isinstance(results[1], ValidationFailed)
    if store.backend == "sqlite":
        assert results[2] is None
        assert await _contents(store, ids) == ["fine", "", nul]
    else:
        assert isinstance(results[2], ValidationFailed)
        assert await _contents(store, ids) == ["fine", "", ""]


async def test_a_large_sqlite_batch_is_written_in_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stores = stores_for("sqlite", tmp_path)
    try:
        store = await stores.open()
        assert isinstance(store, SqlMessageStore)
        ids = await _streaming_replies(store, 7)
        monkeypatch.setattr(sqlite_dialect, "CHECKPOINT_ROWS", 3)
        statements = Statements(store, monkeypatch)
        await asyncio.gather(*(store.checkpoint(id_, f"part {i}") for i, id_ in enumerate(ids)))
        assert statements.count("UPDATE") == 3
        assert await _contents(store, ids) == [f"part {i}" for i in range(7)]
    finally:
        await stores.aclose()


async def test_close_writes_the_checkpoints_already_asked_for(sql_stores: Stores) -> None:
    store = await sql_stores.open()
    ids = await _streaming_replies(store, 10)
    pending = [asyncio.create_task(store.checkpoint(id_, "kept")) for id_ in ids]
    await asyncio.sleep(0)  # asked for, not yet written
    await asyncio.wait_for(store.close(), timeout=10)
    await asyncio.wait_for(asyncio.gather(*pending), timeout=10)
    with pytest.raises(Unavailable):
        await store.checkpoint(ids[0], "too late")
    reopened = await sql_stores.open()
    assert await _contents(reopened, ids) == ["kept"] * 10


# --------------------------------------------------------------------------- the PostgreSQL pool


@pytest.mark.postgres
async def test_postgres_pool_opens_at_most_its_size_and_reuses_the_newest_connection() -> None:
    database = connect_database(parse_url(f"{require_postgres()}?pool_size=3"))

    async def fetch(_: object, cursor: Any) -> list[Any]:
        return list(await cursor.fetchall())

    async def backend_pid(sleep: float = 0.0) -> int:
        result = await database.aio_execute_sql(
            "SELECT pg_backend_pid(), pg_sleep(%s)", (sleep,), fetch
        )
        return int(result[0][0])

    try:
        burst = await asyncio.gather(*(backend_pid(0.05) for _ in range(9)))
        assert len(set(burst)) == 3
        # one after another, on one connection: the one used last, still warm
        quiet = [await backend_pid() for _ in range(5)]
        assert len(set(quiet)) == 1
    finally:
        await database.aio_close()


async def _pid(conn: Any) -> int:
    async with conn.cursor() as cursor:
        await cursor.execute("SELECT pg_backend_pid()")
        row = await cursor.fetchone()
    return int(row[0])


@pytest.mark.postgres
async def test_postgres_pool_closes_connections_left_idle_or_handed_back_mid_transaction() -> None:
    parsed = parse_url(require_postgres())
    pool = PostgresPool(
        size=2,
        timeout=5,
        connect={"database": parsed.database, "host": parsed.host, "port": parsed.port}
        | ({"user": parsed.user} if parsed.user else {}),
        idle_timeout=0.05,
    )
    try:
        conn = await pool.acquire()
        first = await _pid(conn)
        await pool.release(conn)
        again = await pool.acquire()
        assert await _pid(again) == first  # fresh enough: reused
        await pool.release(again)
        await asyncio.sleep(0.1)
        later = await pool.acquire()
        assert conn.closed and await _pid(later) != first  # stale: closed, replaced
        async with later.cursor() as cursor:
            await cursor.execute("BEGIN")
        await pool.release(later)  # mid-transaction: never handed to anyone else
        assert later.closed
        assert not pool.has_acquired_connections()
    finally:
        await pool.close()


# --------------------------------------------------------------------------- migrations, durability


async def test_migrate_is_repeatable_and_concurrent_safe(sql_stores: Stores) -> None:
    nodes = [await sql_stores.open(migrate=False) for _ in range(4)]
    await asyncio.gather(*(node.migrate() for node in nodes))
    await nodes[0].migrate()
    assert (await post(nodes[3])).created


async def test_everything_survives_reopening_the_database(sql_stores: Stores) -> None:
    first = await sql_stores.open()
    posted = await post(first, content="remember me")
    assert posted.reply is not None
    done = await first.finish(posted.reply.id, content="I will", status="complete")
    await first.close()

    second = await sql_stores.open()
    assert await second.list_messages("alice", posted.conversation.id) == [posted.user, done]
    assert await second.get_conversation("alice", posted.conversation.id) == posted.conversation


async def test_sqlite_file_is_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "chat.db"
    store = await open_store(f"sqlite:///{path}")
    try:
        await store.migrate()
        await post(store)
    finally:
        await store.close()
    with sqlite3.connect(path) as check:
        assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_sqlite_in_memory_works_as_one_database() -> None:
    store = await open_store("sqlite:///:memory:")
    try:
        await store.migrate()
        posted = await post(store)
        assert await store.list_messages("alice", posted.conversation.id) == [
            posted.user,
            posted.reply,
        ]
        results = await asyncio.gather(*(post(store) for _ in range(10)))
        assert all(r.created for r in results)
    finally:
        await store.close()


# --------------------------------------------------------------------------- unreachable


async def _assert_unavailable(store: SqlMessageStore) -> None:
    # bounded: an unreachable database must answer fast, never hang
    for call in (store.ping(), store.migrate(), post(store), store.list_conversations("a")):
        with pytest.raises(Unavailable):
            await asyncio.wait_for(call, timeout=10)


async def test_postgres_on_a_closed_port_is_unavailable() -> None:
    store = await open_store("postgresql://postgres@127.0.0.1:1/test?timeout=2")
    try:
        await _assert_unavailable(store)
    finally:
        await store.close()


@pytest.mark.parametrize("where", ["missing/dir/chat.db", "a-file/chat.db"])
async def test_sqlite_where_no_file_can_be_made_is_unavailable(tmp_path: Path, where: str) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    store = await open_store(f"sqlite:///{tmp_path / where}")
    try:
        await _assert_unavailable(store)
    finally:
        await store.close()


@pytest.mark.postgres
async def test_postgres_connection_lost_mid_post_is_unavailable_and_stores_nothing() -> None:
    stores, admin, app = await _tagged_postgres()
    try:
        store = await stores.open()
        conversation = await store.create_conversation("alice")
        # hold the conversation row so the post blocks inside its statement
        with admin.cursor() as cursor:
            cursor.execute(
                "SELECT id FROM conversation WHERE id = %s FOR UPDATE", (conversation.id,)
            )
        task = asyncio.create_task(post(store, conversation_id=conversation.id, client_id="c-1"))
        await _until_waiting_on_a_lock(app, terminate=True)
        with pytest.raises(Unavailable):
            await asyncio.wait_for(task, timeout=10)
        admin.rollback()
        # nothing was stored: the retry with the same client_id is the first post
        retry = await post(store, conversation_id=conversation.id, client_id="c-1")
        assert retry.created is True
        assert len(await store.list_messages("alice", conversation.id) or []) == 2
    finally:
        admin.close()
        await stores.aclose()


# --------------------------------------------------------------------------- URLs, imports


@pytest.mark.parametrize(
    "url",
    [
        "mysql://root@localhost/chat",
        "sqlite://relative.db",
        "sqlite:///",
        "sqlite:///tmp/chat.db?schema=x",
        "postgresql://localhost",
        "postgresql:///chat",
        "postgres://u:pw@host/db?schema=bad-name;drop",
        "postgresql://host/db?pool_size=0",
        "postgresql://host:notaport/db",
        "chat.db",
    ],
)
async def test_a_wrong_url_says_which_forms_are_accepted(url: str) -> None:
    with pytest.raises(ValueError) as raised:
        await open_store(url)
    assert "sqlite:///" in str(raised.value) and "postgresql://" in str(raised.value)
    assert ":pw@" not in str(raised.value)  # never echo a password


async def test_postgres_and_postgresql_schemes_are_both_accepted() -> None:
    for scheme in ("postgres", "postgresql"):
        store = await open_store(f"{scheme}://u:p@127.0.0.1:1/db?schema=s1")
        assert store.backend == "postgresql" and store.schema == "s1"
        await store.close()


async def test_an_explicit_schema_wins_over_the_urls_and_is_not_passed_to_libpq() -> None:
    store = await open_store("postgresql://u@127.0.0.1:1/db?schema=from_url", schema="given")
    assert store.schema == "given"
    await store.close()
    parsed = parse_url("postgresql://u@h/db?schema=from_url&sslmode=disable", schema="given")
    assert parsed.schema == "given" and parsed.extra == {"sslmode": "disable"}


def test_importing_the_store_package_does_not_import_peewee() -> None:
    code = (
        "import sys, sanic_chat.store, sanic_chat.store.memory; "
        "assert 'peewee' not in sys.modules, 'peewee imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- latency


# A timing gate is at the mercy of the machine's other load: run it on purpose
# (``-m slow``) on a quiet box, not on every CI run.
@pytest.mark.slow
async def test_post_p99_is_under_50_ms(sql_stores: Stores) -> None:
    store = await sql_stores.open()
    for _ in range(10):  # warm the pool
        await post(store)
    took = []
    for _ in range(200):
        started = time.perf_counter()
        await post(store)
        took.append(time.perf_counter() - started)
    took.sort()
    p99 = took[int(len(took) * 0.99) - 1]
    assert p99 < 0.050, f"p99 {p99 * 1000:.1f} ms"


async def test_postgres_statements_leave_nothing_in_reference_cycles(
    postgres_stores: Stores,
) -> None:
    """Each aiopg cursor and its transaction helper referred to each other: a
    cycle per statement for the garbage collector, whose full passes stop the
    event loop. Closed cursors let go, so a message's statements are freed by
    reference counting."""
    import gc

    store = await postgres_stores.open()
    first = await post(store)
    assert first.reply is not None
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.garbage.clear()
    try:
        await store.checkpoint(first.reply.id, "partial")
        await store.finish(first.reply.id, content="done", status="complete")
        for i in range(5):
            again = await post(
                store,
                conversation_id=first.conversation.id,
                client_id=f"cycle-{i}",
                content="again",
                history_max_chars=1000,
            )
            assert again.reply is not None
            await store.finish(again.reply.id, content="ok", status="complete")
        await store.list_messages("alice", first.conversation.id)
        gc.collect()
        in_cycles = [type(o).__name__ for o in gc.garbage if "aiopg" in type(o).__module__]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert in_cycles == []


async def _post_while_the_conversation_is_locked(
    store: SqlMessageStore, stores: Stores, conversation_id: str, in_the_lock: list[str]
) -> list[str]:
    """Post to ``conversation_id`` while another transaction holds its row and
    runs ``in_the_lock``; commit that transaction once the post has taken its
    snapshot and waits for the row. The contents of the post's history."""
    assert stores.url is not None
    other = psycopg2.connect(stores.url, connect_timeout=5)
    try:
        with other.cursor() as cursor:
            cursor.execute(f'SET search_path TO "{stores.schema}"')
            cursor.execute(
                "SELECT id FROM conversation WHERE id = %s FOR NO KEY UPDATE", (conversation_id,)
            )
            for statement in in_the_lock:
                cursor.execute(statement)
        posting = asyncio.create_task(
            post(
                store,
                conversation_id=conversation_id,
                content="next question",
                history_max_chars=100_000,
            )
        )
        deadline = time.monotonic() + 5
        while True:  # the post's statement now waits for the row (its snapshot is taken)
            with other.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
                (waiting,) = cursor.fetchone()
            if waiting:
                break
            assert time.monotonic() < deadline, "the post never waited for the row"
            await asyncio.sleep(0.01)
        other.commit()
        posted = await asyncio.wait_for(posting, 5)
    finally:
        other.close()
    assert posted.history is not None
    return [m.content for m in posted.history]


async def test_a_reply_finished_while_the_post_waited_is_read_whole(
    postgres_stores: Stores,
) -> None:
    """The post's own read of the history comes from a snapshot taken before it
    waited for the conversation: there the previous reply is still streaming,
    at its last checkpoint. The history is read again, and has the whole reply."""
    store = await postgres_stores.open()
    assert isinstance(store, SqlMessageStore)
    first = await post(store, content="question")
    assert first.reply is not None
    await store.checkpoint(first.reply.id, "half an ans")
    await asyncio.sleep(0.05)  # the checkpoint is written by its batch
    history = await _post_while_the_conversation_is_locked(
        store,
        postgres_stores,
        first.conversation.id,
        [
            "UPDATE message SET content = 'half an answer, then the rest',"
            f" status = 'complete' WHERE id = '{first.reply.id}'"
        ],
    )
    assert history == ["question", "half an answer, then the rest", "next question"]


async def test_messages_committed_while_the_post_waited_are_in_its_history(
    postgres_stores: Stores,
) -> None:
    store = await postgres_stores.open()
    assert isinstance(store, SqlMessageStore)
    first = await post(store, content="question")
    assert first.reply is not None
    await store.finish(first.reply.id, content="answer", status="complete")
    conversation = first.conversation.id
    history = await _post_while_the_conversation_is_locked(
        store,
        postgres_stores,
        conversation,
        [
            "INSERT INTO message (id, conversation_id, role, content, status, client_id,"
            " created_at, completed_at) VALUES ('m-between', '"
            + conversation
            + "', 'user', 'in between', 'complete', 'c-between',"
            " now() at time zone 'utc', now() at time zone 'utc')",
            "UPDATE conversation SET updated_at = now() at time zone 'utc'"
            f" WHERE id = '{conversation}'",
        ],
    )
    assert history == ["question", "answer", "in between", "next question"]


async def test_the_history_read_with_the_post_matches_a_separate_read(
    postgres_stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await postgres_stores.open()
    assert isinstance(store, SqlMessageStore)
    first = await post(store, content="q0")
    conversation = first.conversation.id
    assert first.reply is not None
    await store.finish(first.reply.id, content="", status="failed")  # an empty reply: skipped
    for i in range(1, 6):
        statements = Statements(store, monkeypatch)
        posted = await post(
            store,
            conversation_id=conversation,
            client_id=f"c-{i}",
            content=f"q{i}",
            history_max_chars=12,
        )
        assert statements.count() == 1
        assert posted.reply is not None and posted.history is not None
        separate = await store.history(conversation, before=posted.user, max_chars=12)
        assert posted.history == separate
        await store.finish(posted.reply.id, content=f"answer {i}", status="complete")
