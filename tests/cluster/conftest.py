"""Fixtures of the cluster tests: real PostgreSQL and Redis (skipped locally when absent,
a failure under CI), one schema and key prefix for the whole run, and node B -- the
node that stays up while the tests kill, drain and cut the others."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.support import Cluster, cluster
from tests.conftest import require_postgres, require_redis
from tests.server import RunningServer

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture(scope="session")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    postgres_url, redis_url = require_postgres(), require_redis()
    with cluster(postgres_url, redis_url, tmp_path_factory.mktemp("cluster")) as made:
        yield made


@pytest.fixture(scope="session")
def node_b(shared: Cluster) -> Iterator[RunningServer]:
    with shared.node("node-b") as server:
        yield server
