"""The shared failure map, Retry-After, redaction and retry-before-first-token."""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncGenerator

import httpx
import pytest

from sanic_chat.core.errors import (
    ProviderError,
    ProviderFailure,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnauthorized,
)
from sanic_chat.core.ports import Chunk, CompletionRequest, Turn
from sanic_chat.providers.catalog import ModelCatalog
from sanic_chat.providers.http import (
    RetryPolicy,
    error_from_response,
    error_from_transport,
    parse_retry_after,
    redact,
    stream_with_retries,
)
from sanic_chat.providers.spec import ModelSpec

SECRET = "sk-live-0123456789abcdefghij"


@pytest.mark.parametrize(
    ("status", "kind", "retryable"),
    [
        (400, ProviderFailure, False),
        (404, ProviderFailure, False),
        (413, ProviderFailure, False),
        (422, ProviderFailure, False),
        (401, ProviderUnauthorized, False),
        (403, ProviderUnauthorized, False),
        (429, ProviderRateLimited, True),
        (500, ProviderFailure, True),
        (502, ProviderFailure, True),
        (503, ProviderFailure, True),
        (529, ProviderFailure, True),
    ],
)
def test_status_maps_to_one_error_kind(status: int, kind: type, retryable: bool) -> None:
    error = error_from_response(status, {}, b"", vendor="OpenAI")
    assert type(error) is kind
    assert error.retryable is retryable
    assert (
        error.code
        == {
            ProviderFailure: "provider_error",
            ProviderUnauthorized: "provider_unauthorized",
            ProviderRateLimited: "provider_rate_limited",
        }[kind]
    )


def test_error_message_has_status_and_vendor_type_but_never_the_key() -> None:
    body = (
        b'{"error": {"type": "invalid_request_error", "message": "bad key '
        + SECRET.encode()
        + b' or Bearer abc.def"}}'
    )
    error = error_from_response(400, {}, body, vendor="OpenAI", secrets=(SECRET,))
    assert "400" in error.message and "invalid_request_error" in error.message
    assert SECRET not in error.message and "abc.def" not in error.message
    unauthorized = error_from_response(
        401,
        {},
        b'{"error": {"type": "authentication_error", "message": "' + SECRET.encode() + b'"}}',
        vendor="Anthropic",
    )
    assert SECRET not in unauthorized.message
    assert "authentication_error" in unauthorized.message


def test_a_non_json_error_body_is_not_echoed() -> None:
    error = error_from_response(
        502, {}, b"<html>proxy says X-Api-Key: hunter2</html>", vendor="Ollama"
    )
    assert error.message == "Ollama answered 502"


def test_redact_trims_long_vendor_messages() -> None:
    assert len(redact("word " * 200)) <= 200
    assert redact(f"key {SECRET} used", (SECRET,)) == "key *** used"


def test_retry_after_seconds_milliseconds_and_http_date() -> None:
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "0.5"}) == 0.5
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    now = time.time()
    date = email.utils.formatdate(now + 20, usegmt=True)
    assert parse_retry_after({"retry-after": date}, now=now) == pytest.approx(20, abs=1)
    assert parse_retry_after({"retry-after": email.utils.formatdate(now - 60, usegmt=True)}) == 0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_429_carries_its_retry_after() -> None:
    error = error_from_response(429, {"retry-after": "7"}, b"", vendor="OpenAI")
    assert isinstance(error, ProviderRateLimited) and error.retry_after == 7.0


def test_transport_errors_map_by_phase() -> None:
    request = httpx.Request("POST", "http://x")
    connect = error_from_transport(
        httpx.ConnectError("no", request=request), vendor="V", responded=False
    )
    assert isinstance(connect, ProviderFailure) and connect.retryable
    read_timeout = error_from_transport(
        httpx.ReadTimeout("slow", request=request), vendor="V", responded=True
    )
    assert isinstance(read_timeout, ProviderTimeout)
    cut = error_from_transport(
        httpx.RemoteProtocolError("cut", request=request), vendor="V", responded=True
    )
    assert isinstance(cut, ProviderFailure) and not cut.retryable
    unanswered = error_from_transport(
        httpx.RemoteProtocolError("gone", request=request), vendor="V", responded=False
    )
    assert unanswered.retryable


def test_full_jitter_backoff_stays_in_its_window() -> None:
    policy = RetryPolicy(base_delay_s=0.5, max_delay_s=4.0)
    assert policy.backoff(1, lambda: 0.999) < 0.5
    assert policy.backoff(3, lambda: 0.999) < 2.0
    assert policy.backoff(10, lambda: 0.999) < 4.0
    assert policy.backoff(2, lambda: 0.0) == 0.0


# --------------------------------------------------------------------------- retry loop


class Script:
    """Attempts that fail or stream as told, counting themselves."""

    def __init__(self, *plans: ProviderError | list[str]) -> None:
        self.plans = list(plans)
        self.attempts = 0

    async def attempt(self) -> AsyncGenerator[Chunk, None]:
        plan = self.plans[min(self.attempts, len(self.plans) - 1)]
        self.attempts += 1
        if isinstance(plan, ProviderError):
            raise plan
        for index, text in enumerate(plan):
            if text == "!":
                raise ProviderFailure("cut", retryable=True)
            yield Chunk(text=f"{text}{index}")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def _drain(
    script: Script, policy: RetryPolicy, clock: Clock
) -> tuple[list[str], Exception | None]:
    got: list[str] = []
    try:
        async for chunk in stream_with_retries(
            script.attempt, policy, clock=clock, sleep=clock.sleep, rng=lambda: 0.5
        ):
            got.append(chunk.text)
    except ProviderError as exc:
        return got, exc
    return got, None


async def test_retries_a_retryable_failure_before_the_first_chunk() -> None:
    script = Script(ProviderFailure("503", retryable=True), ["a", "b"])
    clock = Clock()
    got, error = await _drain(script, RetryPolicy(max_attempts=3, base_delay_s=1.0), clock)
    assert (got, error, script.attempts) == (["a0", "b1"], None, 2)
    assert clock.slept == [0.5]


async def test_never_retries_after_a_chunk_was_yielded() -> None:
    script = Script(["a", "!"], ["x"])
    got, error = await _drain(script, RetryPolicy(max_attempts=5), Clock())
    assert isinstance(error, ProviderFailure)
    assert got == ["a0"] and script.attempts == 1


async def test_does_not_retry_a_non_retryable_failure() -> None:
    script = Script(ProviderFailure("400"), ["x"])
    _, error = await _drain(script, RetryPolicy(max_attempts=5), Clock())
    assert isinstance(error, ProviderFailure) and script.attempts == 1


async def test_stops_at_max_attempts_with_the_last_error() -> None:
    script = Script(ProviderFailure("503", retryable=True))
    _, error = await _drain(script, RetryPolicy(max_attempts=3), Clock())
    assert isinstance(error, ProviderFailure) and script.attempts == 3


async def test_backoff_grows_and_stops_at_the_deadline() -> None:
    script = Script(ProviderFailure("503", retryable=True))
    clock = Clock()
    policy = RetryPolicy(max_attempts=10, deadline_s=3.0, base_delay_s=1.0, max_delay_s=8.0)
    _, error = await _drain(script, policy, clock)
    assert isinstance(error, ProviderFailure)
    assert clock.slept == [0.5, 1.0]  # the next (2.0) would end after the 3 s deadline
    assert script.attempts == 3


async def test_retry_after_is_honoured_exactly_when_it_fits() -> None:
    script = Script(ProviderRateLimited("429", retry_after=2.5), ["ok"])
    clock = Clock()
    got, error = await _drain(script, RetryPolicy(deadline_s=10.0), clock)
    assert error is None and got == ["ok0"]
    assert clock.slept == [2.5]


async def test_retry_after_beyond_the_deadline_fails_without_waiting() -> None:
    script = Script(ProviderRateLimited("429", retry_after=60), ["ok"])
    clock = Clock()
    _, error = await _drain(script, RetryPolicy(deadline_s=10.0), clock)
    assert isinstance(error, ProviderRateLimited)
    assert clock.slept == [] and script.attempts == 1


# --------------------------------------------------------------------------- MockTransport


def _catalog(vendor: str, handler: httpx.MockTransport, **kw: object) -> ModelCatalog:
    spec = ModelSpec(
        name="m",
        provider=vendor,
        model="up",
        base_url="http://up.test",
        api_key=SECRET,
        max_attempts=1,
        **kw,  # type: ignore[arg-type]
    )
    return ModelCatalog([spec], "m", transports=lambda: handler)


async def _outcome(catalog: ModelCatalog) -> tuple[str, ProviderError | None]:
    text = ""
    try:
        async for chunk in catalog.get("m").stream(CompletionRequest([Turn("user", "hi")])):
            text += chunk.text
    except ProviderError as exc:
        return text, exc
    finally:
        await catalog.aclose()
    return text, None


async def test_a_200_that_is_not_an_event_stream_is_a_failure() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"choices": []}))
    _, error = await _outcome(_catalog("openai", transport))
    assert isinstance(error, ProviderFailure) and "event stream" in error.message


async def test_headers_carry_the_key_to_the_vendor_and_nowhere_else() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(401, json={"error": {"type": "invalid_api_key", "message": SECRET}})

    for vendor in ("openai", "anthropic", "ollama"):
        _, error = await _outcome(_catalog(vendor, httpx.MockTransport(handler)))
        assert isinstance(error, ProviderUnauthorized) and SECRET not in error.message
    openai, anthropic, ollama = seen
    assert openai.url == "http://up.test/chat/completions"
    assert openai.headers["authorization"] == f"Bearer {SECRET}"
    assert anthropic.url == "http://up.test/v1/messages"
    assert anthropic.headers["x-api-key"] == SECRET
    assert anthropic.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in anthropic.headers
    assert ollama.url == "http://up.test/api/chat"
    assert SECRET not in anthropic.content.decode()


async def test_a_huge_error_body_is_read_only_so_far() -> None:
    body = b'{"error": {"type": "x", "message": "' + b"y" * 5_000_000 + b'"}}'
    transport = httpx.MockTransport(lambda request: httpx.Response(400, content=body))
    _, error = await _outcome(_catalog("openai", transport))
    assert isinstance(error, ProviderFailure)
    assert error.message == "the model 'm' answered 400"  # truncated body: not JSON, not echoed


async def test_an_empty_conversation_fails_on_iteration_not_on_call() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(500))
    catalog = _catalog("anthropic", transport)
    stream = catalog.get("m").stream(CompletionRequest([Turn("system", "only a system prompt")]))
    with pytest.raises(ProviderFailure, match="no user message"):
        await anext(stream)
    await catalog.aclose()
