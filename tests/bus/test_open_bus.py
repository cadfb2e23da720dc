"""Choosing the bus from its URL."""

from __future__ import annotations

import pytest

from sanic_chat.bus.memory import MemoryBus
from sanic_chat.bus.redis import RedisBus
from sanic_chat.bus.url import open_bus


def test_memory_url_opens_the_in_process_bus() -> None:
    bus = open_bus("memory://", tail_ttl_s=5)
    assert isinstance(bus, MemoryBus) and bus.tail_ttl_s == 5


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://localhost",
        "redis://:secret@redis.internal:6380/3",
        "rediss://user:secret@redis.example.com:6380/1",
        " redis://127.0.0.1:6379/2 ",
    ],
)
async def test_redis_urls_open_a_redis_bus_without_connecting(url: str) -> None:
    bus = open_bus(url, tail_ttl_s=7, node_id="node-1")
    assert isinstance(bus, RedisBus)
    assert bus.tail_ttl_s == 7 and bus.node_id == "node-1" and bus.prefix == "sanic-chat"
    await bus.close()


@pytest.mark.parametrize(
    "url",
    [
        "",
        "memory",
        "memory://somewhere",
        "http://127.0.0.1:6379",
        "postgresql://u:p@db/x",
        "redis://",
        "redis://host:notaport/0",
        "redis://host:6379/zero",
        "unix:///tmp/redis.sock",
    ],
)
def test_other_urls_are_refused_naming_the_accepted_forms(url: str) -> None:
    with pytest.raises(ValueError, match=r"memory://, redis://host:port/db or rediss://"):
        open_bus(url)


def test_a_refused_url_does_not_repeat_its_password() -> None:
    with pytest.raises(ValueError) as refused:
        open_bus("redis://user:hunter2@host:6379/db0")
    assert "hunter2" not in str(refused.value)
    assert "***" in str(refused.value)


def test_a_url_that_forces_resp3_is_refused() -> None:
    with pytest.raises(ValueError, match="protocol"):
        open_bus("redis://127.0.0.1:6379/0?protocol=3")
