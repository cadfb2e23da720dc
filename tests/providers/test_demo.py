from __future__ import annotations

import time

from sanic_chat.core.ports import Chunk, CompletionRequest, Turn
from sanic_chat.providers.demo import DemoProvider


async def _collect(provider: DemoProvider, request: CompletionRequest) -> list[Chunk]:
    return [chunk async for chunk in provider.stream(request)]


def _req(text: str, **kw: object) -> CompletionRequest:
    return CompletionRequest(
        messages=[Turn("system", "be brief"), Turn("user", text)],
        **kw,  # type: ignore[arg-type]
    )


async def test_demo_streams_one_word_per_chunk_then_usage_and_stop() -> None:
    provider = DemoProvider(ttft_ms=0, tokens_per_second=0, reply_tokens=12)
    chunks = await _collect(provider, _req("hello there world"))
    text_chunks = chunks[:-1]
    assert len(text_chunks) == 12
    assert all(c.text.endswith(" ") for c in text_chunks[:-1])
    assert all(len(c.text.split()) == 1 for c in text_chunks)
    last = chunks[-1]
    assert last.text == "" and last.finish_reason == "stop"
    assert last.usage is not None
    assert last.usage.input_tokens == 5 and last.usage.output_tokens == 12


async def test_demo_reply_is_deterministic_per_prompt_and_varies_between_prompts() -> None:
    provider = DemoProvider(ttft_ms=0, tokens_per_second=0, reply_tokens=30)
    a1 = "".join(c.text for c in await _collect(provider, _req("tell me about rivers")))
    a2 = "".join(c.text for c in await _collect(provider, _req("tell me about rivers")))
    b = "".join(c.text for c in await _collect(provider, _req("what is a socket")))
    assert a1 == a2
    assert a1 != b


async def test_demo_paces_first_token_and_rate() -> None:
    provider = DemoProvider(ttft_ms=100, tokens_per_second=100, reply_tokens=10)
    started = time.monotonic()
    stream = provider.stream(_req("x"))
    await stream.__anext__()
    first = time.monotonic() - started
    async for _ in stream:
        pass
    total = time.monotonic() - started
    assert 0.09 <= first < 0.3
    assert 0.18 <= total < 0.5


async def test_demo_max_tokens_caps_reply_with_length_finish() -> None:
    provider = DemoProvider(ttft_ms=0, tokens_per_second=0, reply_tokens=20)
    chunks = await _collect(provider, _req("x", max_tokens=5))
    assert len(chunks) == 6
    assert chunks[-1].finish_reason == "length"
