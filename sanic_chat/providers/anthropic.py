"""Anthropic Messages streaming: ``POST {base_url}/v1/messages``, SSE with named
events (message_start, content_block_*, ping, message_delta, message_stop, error)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import Any

import httpx

from ..core.errors import ProviderFailure
from ..core.ports import Chunk, CompletionRequest, Turn
from ..core.records import Usage
from .http import HttpProvider, VendorDecoder, decode_stream, sse_events

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "AnthropicProvider",
    "AnthropicStreamDecoder",
    "map_stop_reason",
    "to_anthropic_messages",
]

#: Anthropic requires max_tokens; used when neither the request nor the model sets it
DEFAULT_MAX_TOKENS = 1024

_STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# in-stream errors that mean "try again", as their HTTP twins 529/500 do
_RETRYABLE_ERRORS = frozenset({"overloaded_error", "api_error"})


def map_stop_reason(reason: str) -> str:
    return _STOP_REASONS.get(reason, reason)


def to_anthropic_messages(turns: Sequence[Turn]) -> tuple[str | None, list[dict[str, str]]]:
    """(system, messages): system turns join into the top-level ``system``; the
    rest merge consecutive same-role turns so roles alternate, and drop leading
    assistant turns (a truncated history), because the first must be the user's."""
    system: list[str] = []
    messages: list[dict[str, str]] = []
    for turn in turns:
        if turn.role == "system":
            if turn.content:
                system.append(turn.content)
            continue
        role = "assistant" if turn.role == "assistant" else "user"
        if not turn.content:
            continue  # Anthropic refuses empty text blocks
        if not messages and role == "assistant":
            continue
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += "\n\n" + turn.content
        else:
            messages.append({"role": role, "content": turn.content})
    return ("\n\n".join(system) if system else None), messages


class AnthropicStreamDecoder(VendorDecoder):
    """One SSE event (name, data) in, at most one chunk out. Usage (input from
    message_start, output from message_delta) and the stop reason arrive in one
    last chunk at message_stop."""

    vendor = "Anthropic"

    __slots__ = ("finish_reason", "input_tokens", "output_tokens")

    def __init__(self, label: str | None = None) -> None:
        super().__init__(label)
        self.finish_reason: str | None = None
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None

    def feed(self, event: str, data: str) -> Chunk | None:
        if event == "ping" or not data:
            return None
        frame = self.frame(data)
        # the payload's own type is authoritative; the SSE event name repeats it
        kind = frame.get("type") or event
        if kind == "content_block_delta":
            delta = frame.get("delta") or {}
            if delta.get("type") == "text_delta":
                text = delta.get("text")
                if text:
                    return Chunk(text=text)
            return None
        if kind == "message_start":
            usage = (frame.get("message") or {}).get("usage") or {}
            self._take_usage(usage)
            return None
        if kind == "message_delta":
            reason = (frame.get("delta") or {}).get("stop_reason")
            if reason:
                self.finish_reason = map_stop_reason(reason)
            self._take_usage(frame.get("usage") or {})
            return None
        if kind == "message_stop":
            self.done = True
            return Chunk(
                usage=Usage(self.input_tokens, self.output_tokens),
                finish_reason=self.finish_reason or "stop",
            )
        if kind == "error":
            error = frame.get("error") or {}
            error_type = str(error.get("type") or "error")
            message = str(error.get("message") or "")
            raise self.stream_error(error_type, message, retryable=error_type in _RETRYABLE_ERRORS)
        # content_block_start/stop and event types added later carry no text
        return None

    def _take_usage(self, usage: dict[str, Any]) -> None:
        if "input_tokens" in usage and usage["input_tokens"] is not None:
            # cached prompt tokens are reported apart; the model read them all
            self.input_tokens = (
                int(usage["input_tokens"])
                + int(usage.get("cache_creation_input_tokens") or 0)
                + int(usage.get("cache_read_input_tokens") or 0)
            )
        if usage.get("output_tokens") is not None:
            self.output_tokens = int(usage["output_tokens"])


class AnthropicProvider(HttpProvider):
    provider = "anthropic"
    vendor = "Anthropic"
    path = "/v1/messages"

    def build_body(self, request: CompletionRequest) -> dict[str, Any]:
        system, messages = to_anthropic_messages(request.messages)
        if not messages:
            raise ProviderFailure("nothing to send: the conversation has no user message")
        max_tokens = request.max_tokens or self.spec.max_tokens or DEFAULT_MAX_TOKENS
        body: dict[str, Any] = {
            "model": self.spec.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "stream": True,
        }
        if system is not None:
            body["system"] = system
        temperature = self.temperature(request)
        if temperature is not None:
            body["temperature"] = temperature
        return body

    def build_headers(self) -> dict[str, str]:
        headers = {
            "accept": "text/event-stream",
            "anthropic-version": self.spec.anthropic_version,
        }
        if self.spec.api_key:
            headers["x-api-key"] = self.spec.api_key
        return headers

    def decode(self, response: httpx.Response) -> AsyncGenerator[Chunk, None]:
        decoder = AnthropicStreamDecoder(self.label)
        feed = decoder.feed
        return decode_stream(
            sse_events(response), lambda event: feed(event.event, event.data), decoder
        )
