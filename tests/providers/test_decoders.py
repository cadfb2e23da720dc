"""The vendor stream decoders, frame by frame, with no I/O."""

from __future__ import annotations

import orjson
import pytest

from sanic_chat.core.errors import ProviderFailure
from sanic_chat.core.ports import Turn
from sanic_chat.core.records import Usage
from sanic_chat.providers.anthropic import (
    AnthropicStreamDecoder,
    map_stop_reason,
    to_anthropic_messages,
)
from sanic_chat.providers.ollama import OllamaStreamDecoder, map_done_reason
from sanic_chat.providers.openai import OpenAIStreamDecoder, map_finish_reason


def _openai(
    delta: dict[str, object] | None = None, finish: str | None = None, **extra: object
) -> str:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return orjson.dumps({"object": "chat.completion.chunk", "choices": choices, **extra}).decode()


def test_openai_text_then_finish_then_usage_then_done() -> None:
    decoder = OpenAIStreamDecoder()
    assert decoder.feed(_openai({"role": "assistant", "content": ""})) is None
    assert decoder.feed(_openai({"content": "Hel"})).text == "Hel"  # type: ignore[union-attr]
    assert decoder.feed(_openai({}, "length")) is None
    usage = {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    assert decoder.feed(_openai(None, usage=usage)) is None
    last = decoder.feed("[DONE]")
    assert last is not None and decoder.done
    assert (last.text, last.finish_reason, last.usage) == ("", "length", Usage(4, 2))


@pytest.mark.parametrize(
    ("vendor", "expected"),
    [
        ("stop", "stop"),
        ("length", "length"),
        ("content_filter", "content_filter"),
        ("tool_calls", "tool_calls"),
        ("function_call", "tool_calls"),
    ],
)
def test_openai_finish_reasons(vendor: str, expected: str) -> None:
    assert map_finish_reason(vendor) == expected


def test_openai_in_stream_error_and_malformed_frames_fail() -> None:
    with pytest.raises(ProviderFailure, match="server_error"):
        OpenAIStreamDecoder().feed('{"error": {"type": "server_error", "message": "boom"}}')
    with pytest.raises(ProviderFailure, match="malformed"):
        OpenAIStreamDecoder().feed('{"choices": [')
    with pytest.raises(ProviderFailure, match="malformed"):
        OpenAIStreamDecoder().feed("[1, 2]")


def test_openai_end_without_done_is_a_cut_unless_it_had_finished() -> None:
    cut = OpenAIStreamDecoder()
    cut.feed(_openai({"content": "a"}))
    with pytest.raises(ProviderFailure, match="before it finished"):
        cut.end()
    lenient = OpenAIStreamDecoder()
    lenient.feed(_openai({"content": "a"}, "stop"))
    last = lenient.end()
    assert last is not None and last.finish_reason == "stop" and last.usage is None


def _anthropic(payload: dict[str, object]) -> tuple[str, str]:
    return str(payload["type"]), orjson.dumps(payload).decode()


def test_anthropic_events_to_chunks() -> None:
    decoder = AnthropicStreamDecoder()
    start = {
        "type": "message_start",
        "message": {
            "usage": {"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 1}
        },
    }
    assert decoder.feed(*_anthropic(start)) is None
    assert decoder.feed("ping", '{"type": "ping"}') is None
    block = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert decoder.feed(*_anthropic(block)) is None
    delta = {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": "Hi"},
    }
    assert decoder.feed(*_anthropic(delta)).text == "Hi"  # type: ignore[union-attr]
    thinking = {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "thinking_delta", "thinking": "hmm"},
    }
    assert decoder.feed(*_anthropic(thinking)) is None
    assert decoder.feed(*_anthropic({"type": "content_block_stop", "index": 0})) is None
    message_delta = {
        "type": "message_delta",
        "delta": {"stop_reason": "max_tokens"},
        "usage": {"output_tokens": 7},
    }
    assert decoder.feed(*_anthropic(message_delta)) is None
    assert decoder.feed(*_anthropic({"type": "future_event"})) is None
    last = decoder.feed(*_anthropic({"type": "message_stop"}))
    assert last is not None and decoder.done
    assert (last.finish_reason, last.usage) == ("length", Usage(15, 7))


def test_anthropic_error_event_overloaded_is_retryable_others_not() -> None:
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    with pytest.raises(ProviderFailure, match="overloaded_error") as caught:
        AnthropicStreamDecoder().feed(*_anthropic(overloaded))
    assert caught.value.retryable and caught.value.code == "provider_error"
    invalid = {"type": "error", "error": {"type": "invalid_request_error", "message": "no"}}
    with pytest.raises(ProviderFailure) as caught:
        AnthropicStreamDecoder().feed(*_anthropic(invalid))
    assert not caught.value.retryable


def test_anthropic_end_without_message_stop_is_a_cut() -> None:
    with pytest.raises(ProviderFailure, match="before it finished"):
        AnthropicStreamDecoder().end()


@pytest.mark.parametrize(
    ("vendor", "expected"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ],
)
def test_anthropic_stop_reasons(vendor: str, expected: str) -> None:
    assert map_stop_reason(vendor) == expected


def test_anthropic_messages_system_on_top_roles_alternate_user_first() -> None:
    system, messages = to_anthropic_messages(
        [
            Turn("assistant", "left over from a truncated history"),
            Turn("system", "be brief"),
            Turn("user", "one"),
            Turn("user", "two"),
            Turn("assistant", "reply"),
            Turn("assistant", ""),
            Turn("assistant", "more"),
            Turn("system", "and kind"),
            Turn("user", "three"),
        ]
    )
    assert system == "be brief\n\nand kind"
    assert messages == [
        {"role": "user", "content": "one\n\ntwo"},
        {"role": "assistant", "content": "reply\n\nmore"},
        {"role": "user", "content": "three"},
    ]
    assert to_anthropic_messages([Turn("user", "hi")]) == (
        None,
        [{"role": "user", "content": "hi"}],
    )


def test_ollama_lines_to_chunks() -> None:
    decoder = OllamaStreamDecoder()
    assert (
        decoder.feed('{"message": {"role": "assistant", "content": "Hi"}, "done": false}').text
        == "Hi"
    )  # type: ignore[union-attr]
    assert decoder.feed("") is None
    last = decoder.feed(
        '{"message": {"role": "assistant", "content": "!"}, "done": true, '
        '"done_reason": "length", "prompt_eval_count": 3, "eval_count": 9}'
    )
    assert last is not None and decoder.done
    assert (last.text, last.finish_reason, last.usage) == ("!", "length", Usage(3, 9))


def test_ollama_error_line_malformed_line_and_early_end_fail() -> None:
    with pytest.raises(ProviderFailure, match="model not found"):
        OllamaStreamDecoder().feed('{"error": "model not found"}')
    with pytest.raises(ProviderFailure, match="malformed"):
        OllamaStreamDecoder().feed('{"message": ')
    with pytest.raises(ProviderFailure, match="before it finished"):
        OllamaStreamDecoder().end()
    assert map_done_reason(None) == "stop" and map_done_reason("unload") == "stop"
