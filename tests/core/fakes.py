"""In-memory fakes for driving the core with no server, socket or database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from sanic_chat.core.errors import ProviderError, ValidationFailed
from sanic_chat.core.ports import Chunk, CompletionRequest, Provider
from sanic_chat.core.records import Usage


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
