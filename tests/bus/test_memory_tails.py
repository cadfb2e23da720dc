"""The in-process bus keeps finished tails without a timer each, and holds
them no longer than ``tail_ttl_s`` (the contract tests prove the expiry as
readers see it; these prove what the process holds)."""

from __future__ import annotations

import asyncio
import gc

from sanic_chat.bus.memory import MemoryBus

from ._support import completed, deltas, new_id, started


def _timer_handles() -> int:
    gc.collect()
    return sum(isinstance(o, asyncio.TimerHandle) for o in gc.get_objects())


async def _finish_replies(bus: MemoryBus, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        conversation = new_id()
        start = started(conversation)
        await bus.publish(conversation, start)
        for delta in deltas(start.generation_id, ["one ", "two ", "three"]):
            await bus.publish(conversation, delta)
        await bus.publish(conversation, completed(start, "one two three"))
        ids.append(start.generation_id)
    return ids


async def test_finished_tails_schedule_no_timer_each() -> None:
    bus = MemoryBus(tail_ttl_s=60)
    before = _timer_handles()
    await _finish_replies(bus, 500)
    assert _timer_handles() - before < 10


async def test_a_finished_tail_is_one_string_and_reads_back_whole() -> None:
    bus = MemoryBus(tail_ttl_s=60)
    (generation_id,) = await _finish_replies(bus, 1)
    assert bus._tails[generation_id].parts == ["one two three"]
    tail = await bus.tail(generation_id)
    assert tail is not None and tail.text == "one two three" and tail.terminal is not None


async def test_expired_tails_leave_the_process_with_the_next_reply() -> None:
    bus = MemoryBus(tail_ttl_s=0.05)
    old = await _finish_replies(bus, 200)
    assert len(bus._tails) == 200
    await asyncio.sleep(0.1)
    (new,) = await _finish_replies(bus, 1)
    assert set(bus._tails) == {new}
    assert len(bus._expiring) == 1
    assert [await bus.tail(generation_id) for generation_id in old] == [None] * len(old)


async def test_running_tails_never_expire() -> None:
    bus = MemoryBus(tail_ttl_s=0.01)
    conversation = new_id()
    running = started(conversation)
    await bus.publish(conversation, running)
    await asyncio.sleep(0.05)
    await _finish_replies(bus, 3)
    await asyncio.sleep(0.05)
    await _finish_replies(bus, 1)
    assert await bus.tail(running.generation_id) is not None
