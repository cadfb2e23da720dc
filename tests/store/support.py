"""Helpers for the store tests: opening stores on each backend, posting.

PostgreSQL isolation: every test gets its own fresh schema on the shared
``test`` database (``open_store(url, schema=...)``: the tables live there via
the connections' ``search_path``), dropped at teardown, so concurrent test runs
never see each other's rows.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sanic_chat.core.ports import MessageStore, Posted
from sanic_chat.core.records import utcnow
from sanic_chat.store import MemoryMessageStore, open_store
from tests.conftest import require_postgres
from tests.server import drop_schema

POSTGRES = pytest.param("postgres", marks=pytest.mark.postgres)
BACKENDS = ["memory", "sqlite", POSTGRES]
SQL_BACKENDS = ["sqlite", POSTGRES]


class Stores:
    """Opens stores on one database ("nodes"), and cleans all of it up."""

    def __init__(self, kind: str, url: str | None, schema: str | None = None) -> None:
        self.kind = kind
        self.url = url
        self.schema = schema
        self._memory = MemoryMessageStore() if kind == "memory" else None
        self._opened: list[Any] = []

    async def open(self, *, migrate: bool = True) -> MessageStore:
        if self._memory is not None:
            return self._memory  # one process: the only "node" there is
        assert self.url is not None
        store = await open_store(self.url, schema=self.schema)
        self._opened.append(store)
        if migrate:
            await store.migrate()
        return store

    async def aclose(self) -> None:
        for store in self._opened:
            await store.close()
        if self._memory is not None:
            await self._memory.close()
        if self.kind == "postgres" and self.url is not None and self.schema is not None:
            drop_schema(self.url, self.schema)


def stores_for(kind: str, tmp_path: Path) -> Stores:
    if kind == "memory":
        return Stores("memory", None)
    if kind == "sqlite":
        return Stores("sqlite", f"sqlite:///{tmp_path / 'chat.db'}")
    url = require_postgres()
    return Stores("postgres", url, schema=f"test_store_{uuid.uuid4().hex[:16]}")


def soon(seconds: float = 30.0) -> datetime:
    return utcnow() + timedelta(seconds=seconds)


async def post(
    store: MessageStore,
    *,
    owner: str = "alice",
    conversation_id: str | None = None,
    client_id: str | None = None,
    content: str = "hello",
    model: str = "demo",
    node_id: str = "node-1",
    lease_until: datetime | None = None,
    history_max_chars: int | None = None,
) -> Posted:
    return await store.post_user_message(
        owner,
        conversation_id=conversation_id,
        client_id=client_id or str(uuid.uuid4()),
        content=content,
        model=model,
        node_id=node_id,
        lease_until=lease_until or soon(),
        history_max_chars=history_max_chars,
    )
