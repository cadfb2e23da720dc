"""Store fixtures: the same contract suite runs on memory, SQLite and PostgreSQL
(see ``support.py`` for how each is set up and torn down)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sanic_chat.core.ports import MessageStore

from .support import BACKENDS, POSTGRES, SQL_BACKENDS, Stores, stores_for


@pytest.fixture(params=BACKENDS)
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    opened = stores_for(request.param, tmp_path)
    try:
        yield opened
    finally:
        await opened.aclose()


@pytest.fixture(params=SQL_BACKENDS)
async def sql_stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    opened = stores_for(request.param, tmp_path)
    try:
        yield opened
    finally:
        await opened.aclose()


@pytest.fixture(params=[POSTGRES])
async def postgres_stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    opened = stores_for(request.param, tmp_path)
    try:
        yield opened
    finally:
        await opened.aclose()


@pytest.fixture
async def store(stores: Stores) -> MessageStore:
    return await stores.open()
