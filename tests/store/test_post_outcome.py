"""What a failed post tells its caller: "nothing was stored" only when nothing can have
been; :class:`OutcomeUnknown` (naming the reply row it may have made) once its writes
went out -- PostgreSQL's bytes held by a proxy past the store's timeout, then let
through, commit the post the client saw fail."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sanic_chat.core.errors import OutcomeUnknown, Unavailable
from sanic_chat.store import open_store
from sanic_chat.store.sql import SqlMessageStore
from tests.cluster.holding_proxy import HoldingProxy
from tests.conftest import require_postgres

from .support import Stores, post


@pytest.fixture
def proxy() -> Iterator[HoldingProxy]:
    with HoldingProxy(5432) as made:
        yield made


@pytest.fixture
async def postgres(tmp_path: Path) -> AsyncIterator[Stores]:
    """A fresh schema (its tables made directly, not through the proxy)."""
    stores = Stores("postgres", require_postgres(), schema=f"test_store_{uuid.uuid4().hex[:16]}")
    try:
        await stores.open()
        yield stores
    finally:
        await stores.aclose()


async def through(proxy: HoldingProxy, stores: Stores, timeout: float) -> SqlMessageStore:
    assert stores.url is not None
    url = proxy.url_for(stores.url) + f"?timeout={timeout}"
    store = await open_store(url, schema=stores.schema)
    await store.ping()  # a pooled connection, open before the bytes are held
    return store


@pytest.mark.postgres
async def test_a_post_held_past_the_timeout_may_have_been_stored_and_its_retry_finds_it(
    postgres: Stores, proxy: HoldingProxy
) -> None:
    store = await through(proxy, postgres, timeout=0.5)
    direct = await postgres.open(migrate=False)
    try:
        conversation = await direct.create_conversation("alice")
        client_id = str(uuid.uuid4())
        proxy.hold()
        try:
            with pytest.raises(OutcomeUnknown) as refused:
                await post(store, conversation_id=conversation.id, client_id=client_id)
        finally:
            proxy.release()
        assert proxy.held_bytes > 0
        error = refused.value
        assert (error.code, error.http_status) == ("unavailable", 503)
        assert "nothing was stored" not in error.message
        assert "may have been stored" in error.message and "same client_id" in error.message
        assert error.reply_id is not None

        # the statement given up on commits once its bytes arrive: the reply row it
        # was to make, streaming and empty
        for _ in range(100):
            reply = await direct.get_message("alice", error.reply_id)
            if reply is not None:
                break
            await asyncio.sleep(0.05)
        assert reply is not None and (reply.status, reply.content) == ("streaming", "")

        again = await post(store, conversation_id=conversation.id, client_id=client_id)
        assert not again.created
        assert again.reply is not None and again.reply.id == error.reply_id
    finally:
        await store.close()


@pytest.mark.postgres
async def test_a_post_that_cannot_connect_says_nothing_was_stored(
    postgres: Stores, proxy: HoldingProxy
) -> None:
    assert postgres.url is not None
    proxy.cut()  # connect: refused
    store = await open_store(proxy.url_for(postgres.url) + "?timeout=0.5", schema=postgres.schema)
    try:
        with pytest.raises(Unavailable) as refused:
            await post(store, client_id=str(uuid.uuid4()))
        assert not isinstance(refused.value, OutcomeUnknown)
        assert "nothing was stored" in refused.value.message
    finally:
        await store.close()


async def test_sqlite_a_post_refused_by_a_held_write_lock_stored_nothing(tmp_path: Path) -> None:
    """SQLite's post is a transaction in this process: a step that fails (here the
    write lock, held by another connection past the busy timeout) rolls it back, so
    "nothing was stored" is exact -- and no statement can commit once we stopped
    waiting for it."""
    path = tmp_path / "chat.db"
    store = await open_store(f"sqlite:///{path}?timeout=0.2")
    await store.migrate()
    client_id = str(uuid.uuid4())
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(Unavailable) as refused:
            await post(store, client_id=client_id)
        assert not isinstance(refused.value, OutcomeUnknown)
        assert "nothing was stored" in refused.value.message
        other.execute("ROLLBACK")
        assert other.execute("SELECT count(*) FROM message").fetchone() == (0,)
        posted = await post(store, client_id=client_id)
        assert posted.created
    finally:
        other.close()
        await store.close()
