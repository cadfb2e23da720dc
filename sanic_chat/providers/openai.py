"""OpenAI Chat Completions streaming (and every server that speaks it):
``POST {base_url}/chat/completions``, SSE of ``chat.completion.chunk`` until ``[DONE]``."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import httpx

from ..core.errors import ProviderFailure
from ..core.ports import Chunk, CompletionRequest
from ..core.records import Usage
from .http import HttpProvider, decode_stream, loads_json, redact, sse_events

__all__ = ["OpenAIProvider", "OpenAIStreamDecoder", "map_finish_reason"]

_FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "content_filter": "content_filter",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
}


def map_finish_reason(reason: str) -> str:
    return _FINISH_REASONS.get(reason, reason)


class OpenAIStreamDecoder:
    """Bytes-free state machine: one SSE ``data`` payload in, at most one chunk out.

    Text chunks come as they arrive; usage and finish reason come together in
    one last chunk at ``[DONE]``. A stream that ends without ``[DONE]`` is cut,
    unless the finish reason already arrived (lenient with compatible servers).
    """

    vendor = "OpenAI"

    __slots__ = ("done", "finish_reason", "label", "usage")

    def __init__(self, label: str | None = None) -> None:
        #: how messages name the upstream (a provider passes its model's name)
        self.label = label or self.vendor
        self.done = False
        self.finish_reason: str | None = None
        self.usage: Usage | None = None

    def feed(self, data: str) -> Chunk | None:
        if data == "[DONE]":
            self.done = True
            return Chunk(usage=self.usage, finish_reason=self.finish_reason)
        if not data:
            return None
        frame = loads_json(data, self.label)
        if not isinstance(frame, dict):
            raise ProviderFailure(f"{self.label} sent a malformed stream frame")
        error = frame.get("error")
        if error is not None:
            raise _stream_error(error, self.label)
        usage = frame.get("usage")
        if usage:
            self.usage = Usage(
                input_tokens=usage.get("prompt_tokens"),
                output_tokens=usage.get("completion_tokens"),
            )
        choices = frame.get("choices")
        if not choices:
            return None
        choice = choices[0]
        reason = choice.get("finish_reason")
        if reason:
            self.finish_reason = map_finish_reason(reason)
        delta = choice.get("delta")
        text = delta.get("content") if delta else None
        if text:
            return Chunk(text=text)
        return None

    def end(self) -> Chunk | None:
        """The body ended: the final chunk if the stream is complete enough."""
        if self.done:
            return None
        if self.finish_reason is not None:
            self.done = True
            return Chunk(usage=self.usage, finish_reason=self.finish_reason)
        raise ProviderFailure(f"{self.label} ended the stream before it finished")


def _stream_error(error: Any, label: str) -> ProviderFailure:
    if isinstance(error, dict):
        kind = error.get("type") or error.get("code") or "error"
        message = error.get("message") or ""
    else:
        kind, message = "error", str(error)
    retryable = kind in ("server_error", "overloaded_error", "api_error")
    return ProviderFailure(
        f"{label} sent a stream error: {redact(str(kind))}"
        + (f": {redact(str(message))}" if message else ""),
        retryable=retryable,
    )


class OpenAIProvider(HttpProvider):
    provider = "openai"
    vendor = "OpenAI"
    path = "/chat/completions"

    def build_body(self, request: CompletionRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.spec.model,
            "messages": [{"role": turn.role, "content": turn.content} for turn in request.messages],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        max_tokens = request.max_tokens if request.max_tokens is not None else self.spec.max_tokens
        if max_tokens is not None:
            body[self.spec.max_tokens_param] = max_tokens
        temperature = (
            request.temperature if request.temperature is not None else self.spec.temperature
        )
        if temperature is not None:
            body["temperature"] = temperature
        return body

    def build_headers(self) -> dict[str, str]:
        headers = {"accept": "text/event-stream"}
        if self.spec.api_key:
            headers["authorization"] = f"Bearer {self.spec.api_key}"
        return headers

    def decode(self, response: httpx.Response) -> AsyncGenerator[Chunk, None]:
        decoder = OpenAIStreamDecoder(self.label)
        feed = decoder.feed
        return decode_stream(sse_events(response), lambda event: feed(event.data), decoder)
