"""In-memory fakes for driving the core with no server, socket or database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from sanic_chat.bus.memory import MemoryBus
from sanic_chat.core.errors import ProviderError, ValidationFailed
from sanic_chat.core.ports import Chunk, CompletionRequest, Provider, Tail
from sanic_chat.core.records import Message, Usage
from sanic_chat.store.memory import MemoryMessageStore


class ScriptedProvider:
    """A provider whose chunks the test feeds one by one (``feed``/``end``/``fail``),
    recording each request it got and whether its stream was closed."""

    provider = "scripted"

    def __init__(self, name: str = "scripted") -> None:
        self.name = name
        self.requests: list[CompletionRequest] = []
        self.queue: asyncio.Queue[Chunk | ProviderError | None] = asyncio.Queue()
        self.closed = 0

    def feed(self, *texts: str) -> None:
        for text in texts:
            self.queue.put_nowait(Chunk(text))

    def end(self, usage: Usage | None = None, finish_reason: str = "stop") -> None:
        self.queue.put_nowait(Chunk("", usage or Usage(3, 4), finish_reason))
        self.queue.put_nowait(None)

    def fail(self, error: ProviderError) -> None:
        self.queue.put_nowait(error)

    async def stream(self, request: CompletionRequest) -> AsyncIterator[Chunk]:
        self.requests.append(request)
        try:
            while True:
                item = await self.queue.get()
                if item is None:
                    return
                if isinstance(item, ProviderError):
                    raise item
                yield item
        finally:
            self.closed += 1

    async def aclose(self) -> None:
        return None


class StaticModels:
    def __init__(self, *providers: Provider, default: str | None = None) -> None:
        self._providers = {p.name: p for p in providers}
        self._default = default or providers[0].name

    @property
    def default(self) -> str:
        return self._default

    def get(self, name: str) -> Provider:
        try:
            return self._providers[name]
        except KeyError:
            raise ValidationFailed(f"unknown model {name!r}") from None


class Pause:
    """A point where a fake read stops until the test lets it go: the test
    arms it for one key, waits for :attr:`entered`, does what must race the
    read (e.g. publish deltas), then calls :meth:`release`."""

    def __init__(self) -> None:
        self.key: str | None = None
        self.entered = asyncio.Event()
        self._go = asyncio.Event()

    def arm(self, key: str) -> None:
        self.key = key
        self.entered.clear()
        self._go.clear()

    def release(self) -> None:
        self._go.set()

    async def at(self, key: str) -> None:
        if key != self.key:
            return
        self.key = None  # once per arming
        self.entered.set()
        await self._go.wait()


class PausingStore(MemoryMessageStore):
    """The in-memory store whose ``get_message`` of the armed id waits (a slow
    database read, where a resume reads the reply it continues)."""

    def __init__(self) -> None:
        super().__init__()
        self.pause = Pause()

    async def get_message(self, owner: str, message_id: str) -> Message | None:
        await self.pause.at(message_id)
        return await super().get_message(owner, message_id)


class PausingBus(MemoryBus):
    """The in-memory bus whose ``tail`` of the armed generation waits (a slow
    read of the live tail)."""

    def __init__(self, *, tail_ttl_s: float = 60.0) -> None:
        super().__init__(tail_ttl_s=tail_ttl_s)
        self.pause = Pause()

    async def tail(self, generation_id: str) -> Tail | None:
        await self.pause.at(generation_id)
        return await super().tail(generation_id)
