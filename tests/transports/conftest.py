"""The run's shared server on each database (SQLite, then PostgreSQL)."""

from __future__ import annotations

import pytest

from tests.server import RunningServer

from .support import BACKENDS, shared_server


@pytest.fixture(scope="module", params=BACKENDS)
def server(request: pytest.FixtureRequest) -> RunningServer:
    return shared_server(request, request.param)
