"""Buses for the shared contract suite: every test taking ``make_bus`` / ``bus`` runs once
against the in-memory bus and once against Redis (skipped locally without Redis, a failure
under CI). Each test gets its own key prefix, and its keys are deleted afterwards."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

from sanic_chat.bus.memory import MemoryBus
from sanic_chat.bus.redis import RedisBus
from sanic_chat.core.ports import Bus
from tests.conftest import require_redis

MakeBus = Callable[..., Awaitable[Bus]]

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # a bus must close cleanly: a leaked socket (ResourceWarning) fails its test
    for item in items:
        if _HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.filterwarnings("error::ResourceWarning"))


@pytest.fixture
def prefix() -> str:
    return f"sanic-chat-test:{uuid.uuid4().hex}"


async def _delete_keys(client: Redis, prefix: str) -> None:
    async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        await client.delete(key)


@pytest.fixture
async def redis_admin(prefix: str) -> AsyncIterator[Redis]:
    """A plain client for looking behind the bus (and for cleaning up after it)."""
    client = Redis.from_url(require_redis(), protocol=2)
    yield client
    await _delete_keys(client, prefix)
    await client.aclose()


async def _buses(kind: str, prefix: str) -> AsyncIterator[MakeBus]:
    created: list[Bus] = []
    url = require_redis() if kind == "redis" else ""

    async def make(*, tail_ttl_s: float = 60.0, **options: object) -> Bus:
        bus: Bus
        if kind == "memory":
            bus = MemoryBus(tail_ttl_s=tail_ttl_s)
        else:
            bus = RedisBus(url, prefix=prefix, tail_ttl_s=tail_ttl_s, **options)  # type: ignore[arg-type]
        await bus.start()
        created.append(bus)
        return bus

    yield make
    for bus in created:
        await bus.close()
    if kind == "redis":
        client = Redis.from_url(url, protocol=2)
        await _delete_keys(client, prefix)
        await client.aclose()


@pytest.fixture(params=["memory", "redis"])
async def make_bus(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[MakeBus]:
    """A factory of started buses of one kind (closed at the end of the test)."""
    async for make in _buses(request.param, prefix):
        yield make


@pytest.fixture
async def make_redis_bus(prefix: str) -> AsyncIterator[MakeBus]:
    """Redis buses sharing one prefix: several of them are several nodes."""
    async for make in _buses("redis", prefix):
        yield make


@pytest.fixture
async def bus(make_bus: MakeBus) -> Bus:
    return await make_bus()
