"""Store fixtures: the same contract suite runs on memory, SQLite and PostgreSQL
(see ``support.py`` for how each is set up and torn down)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sanic_chat.core.ports import MessageStore

from .support import BACKENDS, POSTGRES, SQL_BACKENDS, Stores, stores_for


def _stores_on(name: str, backends: list[Any]) -> Any:
    """A fixture ``name``: the :class:`Stores` of each of ``backends`` in turn, cleaned up after."""

    @pytest.fixture(name=name, params=backends)
    async def fixture(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
        opened = stores_for(request.param, tmp_path)
        try:
            yield opened
        finally:
            await opened.aclose()

    return fixture


stores = _stores_on("stores", BACKENDS)
sql_stores = _stores_on("sql_stores", SQL_BACKENDS)
postgres_stores = _stores_on("postgres_stores", [POSTGRES])


@pytest.fixture
async def store(stores: Stores) -> MessageStore:
    return await stores.open()
