"""A finished reply leaves nothing for the cyclic garbage collector: its
response, request and body are freed by reference counting the moment the
stream ends. (Cyclic garbage from every reply piled into the collector's old
generation under load, and its full passes stop the event loop.)"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import httpx
import pytest

from sanic_chat.providers.upstream import TransportFactory
from sanic_chat.testing.fake_llm import FakeLLM

from .conftest import VENDORS, ask, provider_of, run, spec_for


@pytest.fixture
def saved_garbage() -> Iterator[list[object]]:
    """gc.garbage while the test runs: what a collection found only in cycles."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.garbage.clear()
    try:
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


@pytest.mark.parametrize("vendor", VENDORS)
async def test_replies_leave_no_httpx_objects_in_cycles(
    fake: FakeLLM, vendor: str, saved_garbage: list[object], upstream: TransportFactory
) -> None:
    spec = spec_for(fake, vendor)
    async with provider_of(spec, upstream) as provider:
        for i in range(5):
            outcome = await run(provider, ask(f"hello {i}"))
            assert outcome.error is None and outcome.text
    gc.collect()
    in_cycles = [o for o in saved_garbage if isinstance(o, httpx.Response | httpx.Request)]
    assert in_cycles == [], f"{len(in_cycles)} httpx objects were only freeable by the collector"
