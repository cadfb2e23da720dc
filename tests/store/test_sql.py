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

import peewee
import psycopg2
import pytest

from sanic_chat.core.errors import Conflict, Unavailable
from sanic_chat.store import open_store
from sanic_chat.store.database import parse_url
from sanic_chat.store.sql import SqlMessageStore
from tests.conftest import require_postgres

from .support import Stores, post

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
    url = require_postgres()
    app = f"store_test_{uuid.uuid4().hex[:12]}"
    tagged = f"{url}{'&' if '?' in url else '?'}application_name={app}"
    stores = Stores("postgres", tagged, f"test_store_{app}")
    admin = psycopg2.connect(url, connect_timeout=5)
    try:
        store = await stores.open()
        conversation = await store.create_conversation("alice")
        # hold the conversation row so the post blocks inside its transaction
        with admin.cursor() as cursor:
            cursor.execute(f'SET search_path TO "{stores.schema}"')
            cursor.execute(
                "SELECT id FROM conversation WHERE id = %s FOR UPDATE", (conversation.id,)
            )
        task = asyncio.create_task(post(store, conversation_id=conversation.id, client_id="c-1"))
        killer = psycopg2.connect(url, connect_timeout=5)
        killer.autocommit = True
        try:
            with killer.cursor() as cursor:
                for _ in range(200):
                    await asyncio.sleep(0.02)
                    cursor.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = %s AND wait_event_type = 'Lock'",
                        (app,),
                    )
                    if cursor.fetchall():
                        break
                else:
                    pytest.fail("the post never waited on the row lock")
        finally:
            killer.close()
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
