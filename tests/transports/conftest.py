"""One real server per module and database (SQLite, then PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.server import RunningServer

from .support import BACKENDS, chat_server, database


@pytest.fixture(scope="module", params=BACKENDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    with database(request.param, tmp_path_factory.mktemp("db")) as db, chat_server(db) as running:
        yield running
