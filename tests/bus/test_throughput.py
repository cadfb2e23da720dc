"""Publish throughput of the Redis bus (a measurement, not a gate: ``-m slow -s``).

One publisher awaits each publish in turn, as one reply's generation does; fifty publish
concurrently, as fifty replies do. Printed as events per second."""

from __future__ import annotations

import asyncio
import time

import pytest

from sanic_chat.bus.redis import RedisBus
from tests.bus._support import deltas, new_id, started, text_pieces
from tests.bus.conftest import MakeBus

pytestmark = pytest.mark.slow


async def _reply(bus: RedisBus, count: int) -> None:
    conversation = new_id()
    start = started(conversation)
    await bus.publish(conversation, start)
    for delta in deltas(start.generation_id, text_pieces(count)):
        await bus.publish(conversation, delta)


@pytest.mark.parametrize(("publishers", "each"), [(1, 20_000), (50, 2_000)])
async def test_publish_throughput(make_redis_bus: MakeBus, publishers: int, each: int) -> None:
    bus = await make_redis_bus()
    assert isinstance(bus, RedisBus)
    await _reply(bus, 100)  # warm up: connection, script
    began = time.perf_counter()
    await asyncio.gather(*(_reply(bus, each) for _ in range(publishers)))
    rate = publishers * (each + 1) / (time.perf_counter() - began)
    print(f"\n{publishers} publisher(s): {rate:,.0f} events/s")
    assert rate > 1_000
