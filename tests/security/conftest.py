"""The shared JWT server most security tests use: HS256, SQLite, quick demo
models, access log on and DEBUG logging (so the logs tests see every line
there is), tickets
that live 2 s (so expiry is quick to see)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.server import RunningServer

from .support import serve_jwt


@pytest.fixture(scope="session")
def jwt_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from serve_jwt(
        tmp_path_factory,
        "jwt",
        args=("--access-log",),
        SANIC_CHAT_TICKET_TTL_S="2",
        SANIC_CHAT_RATE_LIMIT="600/minute",
        SANIC_CHAT_LOG_LEVEL="DEBUG",  # content must stay out even at DEBUG
    )


@pytest.fixture(scope="session")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """No authentication: everyone is ``local``."""
    yield from serve_jwt(tmp_path_factory, "open", SANIC_CHAT_AUTH="none")
