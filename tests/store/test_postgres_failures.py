"""PostgreSQL first runs and failures, at the store: a fresh schema migrated by many
starters at once, and an unreachable server named by its real cause -- on uvloop (the
event loop Sanic runs), where failed connects used to leak a half-made connection.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import uuid
from typing import Any

import psycopg2
import pytest
import uvloop

from sanic_chat.core.errors import Unavailable, failure_cause
from sanic_chat.store import open_store
from sanic_chat.store.sql import SqlMessageStore
from tests.conftest import require_postgres

from .support import Stores, post

pytestmark = pytest.mark.postgres

#: what migrate() creates, tables then indices
RELATIONS = {
    "conversation",
    "message",
    "conversation_by_owner",
    "message_client_key",
    "message_one_streaming",
    "message_by_time",
    "message_reply_to",
    "message_streaming_lease",
    "conversation_pkey",
    "message_pkey",
}


def relations_in(url: str, schema: str) -> set[str]:
    conn = psycopg2.connect(url, connect_timeout=5)
    try:
        with conn.cursor() as cursor:
            cursor.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relkind IN ('r', 'i')",
                (schema,),
            )
            return {row[0] for row in cursor.fetchall()}
    finally:
        conn.close()


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on (connect: refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- first run


async def test_a_fresh_schema_migrated_by_many_starters_at_once_is_complete(
    postgres_stores: Stores,
) -> None:
    assert postgres_stores.url is not None and postgres_stores.schema is not None
    nodes = [await postgres_stores.open(migrate=False) for _ in range(6)]
    first = nodes[0]
    assert isinstance(first, SqlMessageStore)
    assert set(await first.missing_schema()) == RELATIONS - {"conversation_pkey", "message_pkey"}
    # every starter at once, as several nodes' workers do with auto-migrate
    await asyncio.gather(*(node.migrate() for node in nodes))
    assert await first.missing_schema() == []
    assert relations_in(postgres_stores.url, postgres_stores.schema) == RELATIONS
    assert (await post(nodes[-1])).created


async def test_migrating_an_up_to_date_schema_takes_no_lock(postgres_stores: Stores) -> None:
    """A node starting beside busy ones (auto-migrate) must not queue on, or lock, anything
    when there is nothing to create: the advisory lock held elsewhere does not stop it."""
    assert postgres_stores.url is not None
    store = await postgres_stores.open()  # migrated
    holder = psycopg2.connect(postgres_stores.url, connect_timeout=5)
    try:
        with holder.cursor() as cursor:
            cursor.execute("BEGIN")
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", (0x5A_C4A7,))
            await asyncio.wait_for(store.migrate(), timeout=10)
    finally:
        holder.close()


# --------------------------------------------------------------------------- unreachable


def _on_uvloop(check: Any) -> list[dict[str, Any]]:
    """Run ``check()`` on uvloop; the event loop's error reports it left (unretrieved
    future exceptions, unclosed connections), collected once it is done."""
    reports: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: reports.append(ctx))
        await check()
        gc.collect()  # what a leaked half-made connection reports, it reports on collection
        await asyncio.sleep(0.05)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
    return reports


async def _causes(url: str, attempts: int = 4) -> list[str]:
    store = await open_store(url)
    causes: list[str] = []
    try:
        for _ in range(attempts):
            with pytest.raises(Unavailable) as failed:
                await asyncio.wait_for(store.ping(), timeout=10)
            causes.append(failure_cause(failed.value))
            gc.collect()
            await asyncio.sleep(0.05)
    finally:
        await store.close()
    return causes


def test_a_refused_connection_is_named_on_every_attempt_and_leaks_nothing(
    closed_port: int,
) -> None:
    require_postgres()
    causes: list[str] = []

    async def check() -> None:
        causes.extend(await _causes(f"postgresql://postgres:s3cret@127.0.0.1:{closed_port}/test"))

    reports = _on_uvloop(check)
    # the driver's words and where, never the URL's password
    assert causes == [f"connection refused (127.0.0.1:{closed_port})"] * 4
    assert reports == []  # no "Future exception was never retrieved", no "Unclosed connection"


def test_a_missing_database_is_named() -> None:
    url = require_postgres()
    missing = f"does_not_exist_{uuid.uuid4().hex[:8]}"
    base = url.rsplit("/", 1)[0]
    causes: list[str] = []

    async def check() -> None:
        causes.extend(await _causes(f"{base}/{missing}", attempts=2))

    reports = _on_uvloop(check)
    assert causes == [f'database "{missing}" does not exist (127.0.0.1:5432)'] * 2
    assert reports == []
