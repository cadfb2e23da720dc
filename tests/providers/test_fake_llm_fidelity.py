"""The official SDKs read the fake LLM's streams without error: the fake speaks
the vendors' formats, not just what our own clients happen to accept."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import openai
import pytest

from sanic_chat.providers.upstream import TransportFactory
from sanic_chat.testing.fake_llm import FakeLLM, reply_text

from .conftest import Opener, ask, run

PROMPT = "say something about gardens"


def openai_client(fake: FakeLLM, faults: str = "") -> openai.AsyncOpenAI:
    """The official client on the fake, without retries; ``faults`` go in its X-Fake-LLM header."""
    headers = {"X-Fake-LLM": faults} if faults else None
    return openai.AsyncOpenAI(
        base_url=fake.base_url + "/v1", api_key="sk-x", max_retries=0, default_headers=headers
    )


def anthropic_client(fake: FakeLLM, faults: str = "") -> anthropic.AsyncAnthropic:
    """The official client on the fake, without retries; ``faults`` go in its X-Fake-LLM header."""
    headers = {"X-Fake-LLM": faults} if faults else None
    return anthropic.AsyncAnthropic(
        base_url=fake.base_url, api_key="sk-ant-x", max_retries=0, default_headers=headers
    )


async def test_openai_sdk_streams_the_same_text_and_usage(
    fake: FakeLLM, open_provider: Opener
) -> None:
    client = openai_client(fake)
    async with client:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": PROMPT},
            ],
            stream=True,
            stream_options={"include_usage": True},
        )
        text, usage, finish = "", None, None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
            if chunk.usage is not None:
                usage = chunk.usage
    ours = await run(open_provider("openai"), ask(PROMPT, *[]))
    assert text == reply_text(PROMPT, 8) == ours.text
    assert finish == "stop"
    assert usage is not None and ours.last.usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (6, 8)
    assert ours.last.usage.output_tokens == usage.completion_tokens


async def test_openai_sdk_reads_the_non_streamed_answer(fake: FakeLLM) -> None:
    async with openai_client(fake) as client:
        answer = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}], max_tokens=4
        )
    assert answer.choices[0].message.content == reply_text(PROMPT, 4)
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None and answer.usage.completion_tokens == 4


async def test_openai_sdk_sees_the_fakes_errors_as_the_vendors(fake: FakeLLM) -> None:
    async with openai_client(fake, "fault=status:429;retry_after=1") as client:
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}]
            )
    async with openai_client(fake, "fault=error:2") as client:
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], stream=True
        )
        with pytest.raises(openai.APIError, match="fake-llm injected error"):
            async for _ in stream:
                pass


async def test_anthropic_sdk_streams_the_same_text_and_usage(
    fake: FakeLLM, open_provider: Opener
) -> None:
    async with anthropic_client(fake) as client:
        async with client.messages.stream(
            model="claude-sonnet-4-5",
            max_tokens=1024,
            system="be brief",
            messages=[{"role": "user", "content": PROMPT}],
        ) as stream:
            text = "".join([piece async for piece in stream.text_stream])
            final = await stream.get_final_message()
    ours = await run(open_provider("anthropic"), ask(PROMPT))
    assert text == reply_text(PROMPT, 8) == ours.text
    assert final.stop_reason == "end_turn"
    assert final.content[0].type == "text" and final.content[0].text == text
    assert (final.usage.input_tokens, final.usage.output_tokens) == (6, 8)
    assert ours.last.usage is not None
    assert ours.last.usage.output_tokens == final.usage.output_tokens


async def test_anthropic_sdk_reads_the_non_streamed_answer(fake: FakeLLM) -> None:
    async with anthropic_client(fake) as client:
        message = await client.messages.create(
            model="claude-sonnet-4-5", max_tokens=3, messages=[{"role": "user", "content": PROMPT}]
        )
    assert message.content[0].type == "text"
    assert message.content[0].text == reply_text(PROMPT, 3)
    assert message.stop_reason == "max_tokens"


async def test_anthropic_sdk_sees_overloaded_in_stream_and_529(fake: FakeLLM) -> None:
    async with anthropic_client(fake, "fault=error:1") as client:
        with pytest.raises(anthropic.APIStatusError) as caught:
            async with client.messages.stream(
                model="m", max_tokens=10, messages=[{"role": "user", "content": "x"}]
            ) as stream:
                async for _ in stream.text_stream:
                    pass
        assert "overloaded_error" in str(caught.value)
    async with anthropic_client(fake, "fault=status:529") as client:
        with pytest.raises(anthropic.APIStatusError) as caught:
            await client.messages.create(
                model="m", max_tokens=10, messages=[{"role": "user", "content": "x"}]
            )
        assert caught.value.status_code == 529


@pytest.fixture(scope="module")
def keyed_fake() -> Iterator[FakeLLM]:
    with FakeLLM(ttft_ms=0, tps=0, tokens=4, api_key="sk-right-key-0123456789abcdef") as server:
        yield server


@pytest.mark.parametrize("vendor", ["openai", "anthropic", "ollama"])
async def test_the_key_is_sent_the_vendors_way_and_a_wrong_one_never_shows(
    vendor: str, keyed_fake: FakeLLM, catalogs: list, upstream: TransportFactory
) -> None:
    right = Opener(keyed_fake, catalogs, upstream)(vendor, api_key="sk-right-key-0123456789abcdef")
    ok = await run(right, ask("hi"))
    assert ok.error is None and ok.text == reply_text("hi", 4)
    wrong_key = "sk-wrong-key-9876543210zyxwvu"
    wrong = Opener(keyed_fake, catalogs, upstream)(vendor, api_key=wrong_key)
    refused = await run(wrong, ask("hi"))
    assert refused.error is not None
    assert refused.error.code == "provider_unauthorized"
    # the fake echoes the key it got in its error body, as some vendors do
    assert wrong_key not in refused.error.message
    assert "9876543210" not in str(refused.error)
