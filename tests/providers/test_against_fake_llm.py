"""Each HTTP provider against the fake LLM on a real loopback socket."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from sanic_chat.core.errors import (
    ProviderFailure,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnauthorized,
)
from sanic_chat.core.ports import Turn
from sanic_chat.providers.catalog import ModelCatalog
from sanic_chat.providers.upstream import TransportFactory
from sanic_chat.testing.fake_llm import FakeLLM, reply_text, reply_tokens

from .conftest import VENDORS, Opener, ask, run, spec_for

pytestmark = pytest.mark.parametrize("vendor", VENDORS)


async def test_streams_the_exact_text_then_usage_and_stop(
    vendor: str, open_provider: Opener, key: str
) -> None:
    outcome = await open_provider.outcome(
        vendor, f"key={key};tokens=12", "tell me about rivers and harbors"
    )
    assert outcome.error is None
    assert outcome.text == reply_text("tell me about rivers and harbors", 12)
    assert [c.text for c in outcome.chunks[:-1]] == reply_tokens(
        "tell me about rivers and harbors", 12
    )
    assert outcome.last.finish_reason == "stop"
    assert outcome.last.usage is not None
    assert (outcome.last.usage.input_tokens, outcome.last.usage.output_tokens) == (6, 12)


async def test_sends_model_history_and_limits(
    vendor: str, open_provider: Opener, fake: FakeLLM, key: str
) -> None:
    provider = open_provider(vendor, f"key={key}", temperature=0.5)
    history = (Turn("system", "be brief"), Turn("user", "hi"), Turn("assistant", "hello"))
    outcome = await run(provider, ask("and now?", *history, max_tokens=3))
    assert outcome.error is None
    assert outcome.last.finish_reason == "length"
    assert outcome.text == reply_text("and now?", 3)
    body = fake.stats()["last_requests"][key]["body"]
    assert body["model"] == f"{vendor}-model"
    assert body["stream"] is True
    sent = [(m["role"], m["content"]) for m in body["messages"]]
    if vendor == "anthropic":
        assert body["system"] == "be brief"
        assert sent == [("user", "hi"), ("assistant", "hello"), ("user", "and now?")]
        assert body["max_tokens"] == 3 and body["temperature"] == 0.5
    else:
        assert sent == [
            ("system", "be brief"),
            ("user", "hi"),
            ("assistant", "hello"),
            ("user", "and now?"),
        ]
    if vendor == "openai":
        assert body["stream_options"] == {"include_usage": True}
        assert body["max_tokens"] == 3 and body["temperature"] == 0.5
    if vendor == "ollama":
        assert body["options"] == {"num_predict": 3, "temperature": 0.5}


async def test_cut_mid_stream_fails_once_after_the_partial_text(
    vendor: str, open_provider: Opener, fake: FakeLLM, key: str
) -> None:
    outcome = await open_provider.outcome(vendor, f"key={key};fault=cut:3", "a cut stream")
    assert isinstance(outcome.error, ProviderFailure)
    assert outcome.error.code == "provider_error"
    # the three tokens came exactly once, and nothing was retried after them
    assert outcome.text == "".join(reply_tokens("a cut stream", 8)[:3])
    assert fake.stats()["attempts"][key] == 1


async def test_cut_before_any_token_is_not_retried_either(
    vendor: str, open_provider: Opener, fake: FakeLLM, key: str
) -> None:
    outcome = await open_provider.outcome(vendor, f"key={key};fault=cut:0", "x")
    assert isinstance(outcome.error, ProviderFailure)
    assert outcome.chunks == []
    assert fake.stats()["attempts"][key] == 1


async def test_malformed_frame_fails_after_the_partial_text(
    vendor: str, open_provider: Opener, key: str
) -> None:
    outcome = await open_provider.outcome(vendor, f"key={key};fault=malformed:2", "broken json")
    assert isinstance(outcome.error, ProviderFailure)
    assert "malformed" in outcome.error.message
    assert outcome.text == "".join(reply_tokens("broken json", 8)[:2])


async def test_in_stream_error_after_text_fails_without_retry(
    vendor: str, open_provider: Opener, fake: FakeLLM, key: str
) -> None:
    outcome = await open_provider.outcome(vendor, f"key={key};fault=error:2", "an error")
    assert isinstance(outcome.error, ProviderFailure)
    assert "stream error" in outcome.error.message
    assert outcome.text == "".join(reply_tokens("an error", 8)[:2])
    assert fake.stats()["attempts"][key] == 1


@pytest.mark.parametrize("status", [500, 502, 503, 529])
async def test_5xx_before_the_first_token_is_retried_until_it_succeeds(
    vendor: str, status: int, open_provider: Opener, fake: FakeLLM, key: str
) -> None:
    outcome = await open_provider.outcome(
        vendor, f"key={key};fault=status:{status};fail_first=2", "retry me"
    )
    assert outcome.error is None
    assert outcome.text == reply_text("retry me", 8)
    assert fake.stats()["attempts"][key] == 3


async def test_5xx_gives_up_after_max_attempts(
    vendor: str, open_provider: Opener, fake: FakeLLM, key: str
) -> None:
    outcome = await open_provider.outcome(
        vendor, f"key={key};fault=status:503", "x", max_attempts=2
    )
    assert isinstance(outcome.error, ProviderFailure)
    assert outcome.error.retryable
    assert "503" in outcome.error.message
    assert fake.stats()["attempts"][key] == 2


@pytest.mark.parametrize("status", [400, 404, 422])
async def test_other_4xx_fail_at_once(
    vendor: str, status: int, open_provider: Opener, fake: FakeLLM, key: str
) -> None:
    outcome = await open_provider.outcome(vendor, f"key={key};fault=status:{status}", "x")
    assert type(outcome.error) is ProviderFailure
    assert not outcome.error.retryable
    assert str(status) in outcome.error.message
    assert fake.stats()["attempts"][key] == 1


@pytest.mark.parametrize("status", [401, 403])
async def test_401_and_403_are_unauthorized_and_not_retried(
    vendor: str, status: int, open_provider: Opener, fake: FakeLLM, key: str
) -> None:
    outcome = await open_provider.outcome(vendor, f"key={key};fault=status:{status}", "x")
    assert isinstance(outcome.error, ProviderUnauthorized)
    assert outcome.error.code == "provider_unauthorized"
    assert fake.stats()["attempts"][key] == 1


async def test_429_honours_retry_after_then_succeeds(
    vendor: str, open_provider: Opener, fake: FakeLLM, key: str
) -> None:
    provider = open_provider(vendor, f"key={key};fault=status:429;retry_after=0.3;fail_first=1")
    started = time.monotonic()
    outcome = await run(provider, ask("x"))
    assert outcome.error is None
    assert time.monotonic() - started >= 0.3
    assert fake.stats()["attempts"][key] == 2


async def test_429_whose_retry_after_passes_the_deadline_fails_at_once(
    vendor: str, open_provider: Opener, fake: FakeLLM, key: str
) -> None:
    provider = open_provider(
        vendor, f"key={key};fault=status:429;retry_after=30", retry_deadline_s=2.0
    )
    started = time.monotonic()
    outcome = await run(provider, ask("x"))
    assert isinstance(outcome.error, ProviderRateLimited)
    assert outcome.error.code == "provider_rate_limited"
    assert outcome.error.retry_after == 30.0
    assert time.monotonic() - started < 1.0
    assert fake.stats()["attempts"][key] == 1


async def test_stall_longer_than_stream_timeout_is_a_timeout(
    vendor: str, open_provider: Opener, fake: FakeLLM, key: str
) -> None:
    provider = open_provider(vendor, f"key={key};fault=stall:3;at=2", stream_timeout_s=0.3)
    started = time.monotonic()
    outcome = await run(provider, ask("slow"))
    assert isinstance(outcome.error, ProviderTimeout)
    assert outcome.error.code == "provider_timeout"
    assert time.monotonic() - started < 2.0
    assert outcome.text == "".join(reply_tokens("slow", 8)[:2])
    assert fake.stats()["attempts"][key] == 1


async def test_a_short_stall_within_the_timeout_is_fine(
    vendor: str, open_provider: Opener, key: str
) -> None:
    outcome = await open_provider.outcome(
        vendor, f"key={key};fault=stall:0.2;at=1", "pause", stream_timeout_s=2
    )
    assert outcome.error is None
    assert outcome.text == reply_text("pause", 8)


async def _disconnects(fake: FakeLLM, key: str, within: float = 1.0) -> int:
    deadline = time.monotonic() + within
    while True:
        seen = fake.stats()["disconnects_by_key"].get(key, 0)
        if seen or time.monotonic() > deadline:
            return int(seen)
        await asyncio.sleep(0.01)


async def test_closing_the_stream_closes_the_upstream_at_once(
    vendor: str, open_provider: Opener, fake: FakeLLM, key: str
) -> None:
    provider = open_provider(vendor, f"key={key};tps=20;tokens=200")
    stream = provider.stream(ask("long"))
    first = await anext(stream)
    second = await anext(stream)
    assert first.text + second.text == "".join(reply_tokens("long", 200)[:2])
    await stream.aclose()  # type: ignore[attr-defined]
    assert await _disconnects(fake, key) == 1


async def test_cancelling_the_consumer_task_closes_the_upstream(
    vendor: str, open_provider: Opener, fake: FakeLLM, key: str
) -> None:
    provider = open_provider(vendor, f"key={key};tps=20;tokens=200")
    got: list[str] = []
    two = asyncio.Event()

    async def consume() -> None:
        async for chunk in provider.stream(ask("long")):
            got.append(chunk.text)
            if len(got) == 2:
                two.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(two.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _disconnects(fake, key) == 1


async def test_cancel_during_time_to_first_token_closes_the_upstream(
    vendor: str, open_provider: Opener, fake: FakeLLM, key: str
) -> None:
    provider = open_provider(vendor, f"key={key};ttft_ms=5000")
    task = asyncio.create_task(run(provider, ask("wait")))
    for _ in range(200):
        if fake.stats()["attempts"].get(key) == 1:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _disconnects(fake, key) == 1


async def test_connect_refused_is_a_retryable_failure_retried_then_reported(
    vendor: str, catalogs: list[ModelCatalog], fake: FakeLLM, upstream: TransportFactory
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    spec = spec_for(fake, vendor, base_url=f"http://127.0.0.1:{port}", max_attempts=2)
    catalog = ModelCatalog([spec], spec.name, transports=upstream)
    catalogs.append(catalog)
    outcome = await run(catalog.get(spec.name), ask("x"))
    assert isinstance(outcome.error, ProviderFailure)
    assert outcome.error.retryable
    assert "connect" in outcome.error.message


async def test_an_in_stream_error_before_any_text_is_retried_when_the_vendor_says_overloaded(
    vendor: str, open_provider: Opener, fake: FakeLLM, key: str
) -> None:
    # OpenAI server_error and Anthropic overloaded_error are retryable; Ollama's
    # error lines carry no type, so they are final
    retried = vendor != "ollama"
    outcome = await open_provider.outcome(vendor, f"key={key};fault=error:0;fail_first=1", "again")
    if retried:
        assert outcome.error is None and outcome.text == reply_text("again", 8)
        assert fake.stats()["attempts"][key] == 2
    else:
        assert isinstance(outcome.error, ProviderFailure) and outcome.chunks == []
        assert fake.stats()["attempts"][key] == 1


async def test_many_concurrent_streams_share_one_pool(
    vendor: str, open_provider: Opener, fake: FakeLLM, key: str
) -> None:
    provider = open_provider(vendor, f"key={key};tps=200;tokens=10")
    outcomes = await asyncio.gather(*(run(provider, ask(f"q{i}")) for i in range(50)))
    assert all(o.error is None for o in outcomes)
    assert all(o.text == reply_text(f"q{i}", 10) for i, o in enumerate(outcomes))
    assert fake.stats()["attempts"][key] == 50
