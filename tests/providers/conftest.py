"""Provider tests run against the fake LLM server on a real loopback socket.

One fake serves the whole session (on its own thread); each test names its own
stats bucket with a ``key=`` directive so that counts never mix.

Every test that opens a provider over the network (``open_provider``, or the
``upstream`` fixture itself) runs twice: over our HTTP stack (``pool``) and over
httpx's own transport (``httpx``), the two values of SANIC_CHAT_UPSTREAM_HTTP,
so the default run covers both.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest

from sanic_chat.core.errors import ProviderError
from sanic_chat.core.ports import Chunk, CompletionRequest, Provider, Turn
from sanic_chat.providers.catalog import ModelCatalog
from sanic_chat.providers.spec import ModelSpec
from sanic_chat.providers.upstream import UPSTREAM_HTTP, TransportFactory
from sanic_chat.testing.fake_llm import FakeLLM

VENDORS = ("openai", "anthropic", "ollama")
_keys = itertools.count()


@pytest.fixture(scope="session")
def fake() -> Iterator[FakeLLM]:
    with FakeLLM(ttft_ms=0, tps=0, tokens=8) as server:
        yield server


@pytest.fixture
def key(request: pytest.FixtureRequest) -> str:
    return f"{request.node.name}-{next(_keys)}"


def base_url(fake: FakeLLM, vendor: str) -> str:
    return fake.base_url + "/v1" if vendor == "openai" else fake.base_url


def spec_for(fake: FakeLLM, vendor: str, directives: str = "", **overrides: Any) -> ModelSpec:
    spec = ModelSpec(
        name=f"{vendor}-test",
        provider=vendor,
        model=f"{vendor}-model",
        base_url=base_url(fake, vendor),
        stream_timeout_s=5.0,
        retry_base_delay_s=0.01,
        retry_max_delay_s=0.05,
        headers=(("X-Fake-LLM", directives),) if directives else (),
    )
    return replace(spec, **overrides)


@pytest.fixture(params=list(UPSTREAM_HTTP))
def upstream(request: pytest.FixtureRequest) -> TransportFactory:
    """The providers' HTTP stack, each in turn (see the module's docstring)."""
    return UPSTREAM_HTTP[request.param]


@pytest.fixture
async def catalogs() -> AsyncIterator[list[ModelCatalog]]:
    """Catalogs made by a test, closed after it."""
    made: list[ModelCatalog] = []
    yield made
    for catalog in made:
        await catalog.aclose()


@contextlib.asynccontextmanager
async def provider_of(spec: ModelSpec, upstream: TransportFactory) -> AsyncIterator[Provider]:
    """The provider of ``spec`` over ``upstream``; its catalog is closed on leaving."""
    catalog = ModelCatalog([spec], spec.name, transports=upstream)
    try:
        yield catalog.get(spec.name)
    finally:
        await catalog.aclose()


@dataclass
class Opener:
    fake: FakeLLM
    catalogs: list[ModelCatalog]
    upstream: TransportFactory

    def __call__(self, vendor: str, directives: str = "", **overrides: Any) -> Provider:
        spec = spec_for(self.fake, vendor, directives, **overrides)
        catalog = ModelCatalog([spec], spec.name, transports=self.upstream)
        self.catalogs.append(catalog)
        return catalog.get(spec.name)

    async def outcome(self, vendor: str, directives: str, text: str, **overrides: Any) -> Outcome:
        """Open ``vendor``'s provider and run one request for ``text`` to its end."""
        return await run(self(vendor, directives, **overrides), ask(text))


@pytest.fixture
def open_provider(
    fake: FakeLLM, catalogs: list[ModelCatalog], upstream: TransportFactory
) -> Opener:
    return Opener(fake, catalogs, upstream)


def ask(text: str, *history: Turn, **kw: Any) -> CompletionRequest:
    return CompletionRequest(messages=[*history, Turn("user", text)], **kw)


@dataclass
class Outcome:
    chunks: list[Chunk]
    error: ProviderError | None

    @property
    def text(self) -> str:
        return "".join(chunk.text for chunk in self.chunks)

    @property
    def last(self) -> Chunk:
        return self.chunks[-1]


async def run(provider: Provider, request: CompletionRequest) -> Outcome:
    chunks: list[Chunk] = []
    try:
        async for chunk in provider.stream(request):
            chunks.append(chunk)
    except ProviderError as exc:
        return Outcome(chunks, exc)
    return Outcome(chunks, None)
