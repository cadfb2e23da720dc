"""Replies reuse the upstream connection: a stream is read to the end of its
body after the vendor's end marker, so the connection goes back to the pool
(against a real vendor this saves a TCP and TLS handshake per reply)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sanic_chat.providers.upstream import TransportFactory
from sanic_chat.testing.fake_llm import FakeLLM
from tests.chaos import TcpProxy

from .conftest import VENDORS, ask, provider_of, run, spec_for


@pytest.mark.parametrize("vendor", VENDORS)
async def test_consecutive_replies_share_one_upstream_connection(
    fake: FakeLLM, vendor: str, upstream: TransportFactory
) -> None:
    with TcpProxy(int(fake.base_url.rsplit(":", 1)[1])) as proxy:
        spec = spec_for(fake, vendor)
        spec = replace(spec, base_url=proxy.url_for(spec.base_url or ""))
        async with provider_of(spec, upstream) as provider:
            for i in range(3):
                outcome = await run(provider, ask(f"hello {i}"))
                assert outcome.error is None and outcome.text
                assert outcome.last.finish_reason == "stop"
        assert proxy.connections_made == 1
