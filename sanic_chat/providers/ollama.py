"""Ollama chat streaming: ``POST {base_url}/api/chat``, NDJSON until ``"done": true``."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, cast

import httpx

from ..core.ports import Chunk, CompletionRequest
from ..core.records import Usage
from .http import HttpProvider, VendorDecoder, decode_stream

__all__ = ["OllamaProvider", "OllamaStreamDecoder", "map_done_reason"]

_DONE_REASONS = {"stop": "stop", "length": "length", "load": "stop", "unload": "stop"}


def map_done_reason(reason: str | None) -> str:
    if not reason:
        return "stop"
    return _DONE_REASONS.get(reason, reason)


class OllamaStreamDecoder(VendorDecoder):
    """One NDJSON line in, at most one chunk out. The
    ``done`` line carries usage and the reason (and possibly a last piece of
    text): it becomes the final chunk."""

    vendor = "Ollama"

    __slots__ = ()

    def feed(self, line: str | bytes) -> Chunk | None:
        if not line.strip():
            return None
        frame = self.frame(line)
        error = frame.get("error")
        if error is not None:
            raise self.stream_error(str(error))
        message = frame.get("message") or {}
        text = message.get("content") or ""
        if frame.get("done"):
            self.done = True
            return Chunk(
                text=text,
                usage=Usage(frame.get("prompt_eval_count"), frame.get("eval_count")),
                finish_reason=map_done_reason(frame.get("done_reason")),
            )
        if text:
            return Chunk(text=text)
        return None


class OllamaProvider(HttpProvider):
    provider = "ollama"
    vendor = "Ollama"
    path = "/api/chat"

    def build_body(self, request: CompletionRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.spec.model,
            "messages": self.plain_messages(request),
            "stream": True,
        }
        options = self.sampling(request, "num_predict")
        if options:
            body["options"] = options
        return body

    def build_headers(self) -> dict[str, str]:
        # Ollama itself has no auth; proxies in front of it usually want a Bearer
        return self.bearer({"accept": "application/x-ndjson"})

    def decode(self, response: httpx.Response) -> AsyncGenerator[Chunk, None]:
        decoder = OllamaStreamDecoder(self.label)
        # httpx types it an iterator; it is an async generator (closed on exit)
        lines = cast(AsyncGenerator[str, None], response.aiter_lines())
        return decode_stream(lines, decoder.feed, decoder)
