"""Drain: at shutdown, the replies running here finish (or are stopped) and
their ends reach this process's connections before they close."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping

from .errors import Unavailable
from .events import TERMINAL_TYPES, ServerEvent
from .generation import Generation
from .ports import Bus

__all__ = ["drain"]

#: at shutdown, how long the ends of the drained replies may take to come back through the bus
_HEAR_END_S = 2.0


async def drain(running: Mapping[str, Generation], bus: Bus, timeout_s: float) -> None:
    """Let the ``running`` replies finish for up to ``timeout_s``, then stop the
    rest (stored ``interrupted`` with their text). The caller stopped taking
    messages first.

    Returns once every reply that ran here has ended AND its terminal event
    came back through the bus -- so it is in the queues of this process's
    connections, and closing them next loses nothing.
    """
    deadline = time.monotonic() + timeout_s
    ends: dict[str, asyncio.Event] = {}
    unsubscribes: list[Callable[[], Awaitable[None]]] = []
    try:
        # a reply being posted right now joins ``running`` a moment later
        while running and time.monotonic() < deadline:
            for generation in list(running.values()):
                if generation.id not in ends:
                    unsubscribes += await _hear_end(bus, generation, ends)
            await _wait_all([g.done for g in running.values()], deadline)
            await asyncio.sleep(0.01)  # an ended reply leaves ``running`` after its done
        for generation in list(running.values()):
            generation.cancel("interrupted")
        await _wait_all([g.done for g in running.values()], time.monotonic() + 10.0)
        await _wait_all(list(ends.values()), time.monotonic() + _HEAR_END_S)
    finally:
        for unsubscribe in unsubscribes:
            with contextlib.suppress(Exception):
                await unsubscribe()


async def _hear_end(
    bus: Bus, generation: Generation, ends: dict[str, asyncio.Event]
) -> list[Callable[[], Awaitable[None]]]:
    """Set ``ends[generation.id]`` when its terminal event is heard on the bus
    (at once if the bus is unreachable: there is nothing to wait for)."""
    heard = ends[generation.id] = asyncio.Event()

    def listener(event: ServerEvent) -> None:
        if isinstance(event, TERMINAL_TYPES) and event.generation_id == generation.id:
            heard.set()

    try:
        return [await bus.subscribe(generation.conversation_id, listener)]
    except Unavailable:
        heard.set()
        return []


async def _wait_all(events: list[asyncio.Event], deadline: float) -> None:
    """Wait until every event is set, or until ``deadline`` (monotonic)."""
    pending = [e.wait() for e in events if not e.is_set()]
    if not pending:
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*pending), max(0.0, deadline - time.monotonic()))
