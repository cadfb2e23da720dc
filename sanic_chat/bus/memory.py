"""The in-process bus: fan-out and live tails for one process.

Listeners run synchronously inside ``publish``, in subscription order, so the
events of one conversation reach every listener in publish order. A tail
is kept ``tail_ttl_s`` after its terminal event; after that the database
serves the finished reply.

Finished tails expire without a timer each: they join a queue in the order
they finished (the TTL is one for all, so that is also the order they expire
in), and the next reply to finish, or the next read of a tail, drops the
expired ones. A
timer per finished reply held a timer handle, a libuv timer, a bound method
and a context copy for a minute: at 900 users that was 40 % of the objects
in the process, and every full pass of the garbage collector -- which stops
the event loop -- walked them all.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from sanic_chat.core.events import (
    TERMINAL_TYPES,
    GenerationDelta,
    GenerationStarted,
    ServerEvent,
    TerminalEvent,
)
from sanic_chat.core.offsets import started_event, text_beyond
from sanic_chat.core.ports import CancelListener, EventListener, Tail

from .listeners import remove_listener

log = logging.getLogger(__name__)

__all__ = ["MemoryBus"]


class _LiveTail:
    """Text is kept as parts and joined on demand: appending to one str per
    delta would copy the whole reply on every token."""

    __slots__ = ("conversation_id", "length", "parts", "started", "terminal")

    def __init__(self, conversation_id: str, started: GenerationStarted) -> None:
        self.conversation_id = conversation_id
        self.started = started
        self.parts: list[str] = []
        self.length = 0  # code points in parts
        self.terminal: TerminalEvent | None = None

    def extend(self, delta: GenerationDelta) -> None:
        """Join by offset, as the Redis bus does: a repeated or overlapping delta adds only
        what is new; one that starts beyond the text so far (a gap) is not appended."""
        new = text_beyond(self.length, delta.offset, delta.text)
        if new:
            self.parts.append(new)
            self.length += len(new)

    def compact(self) -> None:
        """One string instead of a part per delta (a finished tail only waits
        to be read or to expire)."""
        if len(self.parts) > 1:
            self.parts = ["".join(self.parts)]

    def snapshot(self) -> Tail:
        self.compact()
        text = self.parts[0] if self.parts else ""
        return Tail(self.started, text, self.terminal, self.conversation_id)


class MemoryBus:
    def __init__(self, *, tail_ttl_s: float = 60.0) -> None:
        self.tail_ttl_s = tail_ttl_s
        self._listeners: dict[str, list[EventListener]] = {}
        self._tails: dict[str, _LiveTail] = {}
        #: (monotonic expiry, generation id) of finished tails, oldest first
        self._expiring: deque[tuple[float, str]] = deque()
        self._cancel_listeners: list[CancelListener] = []

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._listeners.clear()
        self._tails.clear()
        self._expiring.clear()

    def _drop_expired(self, now: float) -> None:
        expiring, tails = self._expiring, self._tails
        while expiring and expiring[0][0] <= now:
            tails.pop(expiring.popleft()[1], None)

    async def ping(self) -> None:
        return None

    async def publish(self, conversation_id: str, event: ServerEvent) -> None:
        self.publish_nowait(conversation_id, event)

    def publish_nowait(self, conversation_id: str, event: ServerEvent) -> None:
        if isinstance(event, GenerationDelta):
            tail = self._tails.get(event.generation_id)
            if tail is not None:
                tail.extend(event)
        elif isinstance(event, GenerationStarted):
            self._tails[event.generation_id] = _LiveTail(conversation_id, event)
        elif isinstance(event, TERMINAL_TYPES):
            tail = self._tails.get(event.generation_id)
            if tail is None:
                # a terminal without a live tail (e.g. an orphan marked
                # interrupted): followers still need to hear it
                tail = self._tails[event.generation_id] = _LiveTail(
                    conversation_id, started_event(event.message)
                )
                tail.parts.append(event.message.content)
                tail.length = len(event.message.content)
            tail.terminal = event
            tail.compact()
            now = time.monotonic()
            self._drop_expired(now)
            self._expiring.append((now + self.tail_ttl_s, event.generation_id))
        listeners = self._listeners.get(conversation_id)
        if listeners:
            for listener in tuple(listeners):
                try:
                    listener(event)
                except Exception:  # one broken listener must not starve the others
                    log.exception("bus listener failed")

    async def subscribe(
        self, conversation_id: str, listener: EventListener
    ) -> Callable[[], Awaitable[None]]:
        self._listeners.setdefault(conversation_id, []).append(listener)

        async def unsubscribe() -> None:
            remove_listener(self._listeners, conversation_id, listener)

        return unsubscribe

    async def tail(self, generation_id: str) -> Tail | None:
        self._drop_expired(time.monotonic())
        live = self._tails.get(generation_id)
        return None if live is None else live.snapshot()

    async def request_cancel(self, generation_id: str) -> None:
        for listener in tuple(self._cancel_listeners):
            try:
                listener(generation_id)
            except Exception:  # as on Redis: a broken handler hurts neither others nor caller
                log.exception("cancel listener failed")

    async def on_cancel(self, listener: CancelListener) -> None:
        self._cancel_listeners.append(listener)

    def subscriber_count(self, conversation_id: str) -> int:
        return len(self._listeners.get(conversation_id, ()))
