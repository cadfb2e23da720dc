"""OpenAI Chat Completions streaming (and every server that speaks it):
``POST {base_url}/chat/completions``, SSE of ``chat.completion.chunk`` until ``[DONE]``."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import httpx

from ..core.errors import ProviderFailure
from ..core.ports import Chunk, CompletionRequest
from ..core.records import Usage
from .http import HttpProvider, VendorDecoder, decode_stream, sse_events

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


class OpenAIStreamDecoder(VendorDecoder):
    """One SSE ``data`` payload in, at most one chunk out.

    Text chunks come as they arrive; usage and finish reason come together in
    one last chunk at ``[DONE]``. A stream that ends without ``[DONE]`` is cut,
    unless the finish reason already arrived (lenient with compatible servers).
    """

    vendor = "OpenAI"

    __slots__ = ("finish_reason", "usage")

    def __init__(self, label: str | None = None) -> None:
        super().__init__(label)
        self.finish_reason: str | None = None
        self.usage: Usage | None = None

    def feed(self, data: str) -> Chunk | None:
        if data == "[DONE]":
            self.done = True
            return Chunk(usage=self.usage, finish_reason=self.finish_reason)
        if not data:
            return None
        frame = self.frame(data)
        error = frame.get("error")
        if error is not None:
            raise self._stream_error(error)
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

    def _stream_error(self, error: Any) -> ProviderFailure:
        if isinstance(error, dict):
            kind = error.get("type") or error.get("code") or "error"
            message = error.get("message") or ""
        else:
            kind, message = "error", str(error)
        retryable = kind in ("server_error", "overloaded_error", "api_error")
        return self.stream_error(str(kind), str(message), retryable=retryable)


class OpenAIProvider(HttpProvider):
    provider = "openai"
    vendor = "OpenAI"
    path = "/chat/completions"

    def build_body(self, request: CompletionRequest) -> dict[str, Any]:
        return {
            "model": self.spec.model,
            "messages": self.plain_messages(request),
            "stream": True,
            "stream_options": {"include_usage": True},
            **self.sampling(request, self.spec.max_tokens_param),
        }

    def build_headers(self) -> dict[str, str]:
        return self.bearer({"accept": "text/event-stream"})

    def decode(self, response: httpx.Response) -> AsyncGenerator[Chunk, None]:
        decoder = OpenAIStreamDecoder(self.label)
        feed = decoder.feed
        return decode_stream(sse_events(response), lambda event: feed(event.data), decoder)
