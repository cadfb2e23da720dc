"""The three vendor wire formats, as the fake LLM server writes them: bytes only.

Each format gives the frames around the tokens (``head``, ``token``, ``tail``),
the faults (``error_frame``, ``malformed_frame``), the error body of an HTTP
status, and the whole non-streamed answer. Frames copy what the vendors send
(field order, ``null``s, event names) so that the official SDKs accept them.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson

__all__ = ["FORMATS", "AnthropicFormat", "OllamaFormat", "OpenAIFormat", "Reply", "WireFormat"]


@dataclass(frozen=True, slots=True)
class Reply:
    """What one request is answered with."""

    model: str
    tokens: list[str]
    input_tokens: int
    truncated: bool  # cut short by the request's max tokens
    include_usage: bool  # OpenAI: stream_options.include_usage


def _json(value: Any) -> bytes:
    return orjson.dumps(value)


class WireFormat:
    name: ClassVar[str]
    content_type: ClassVar[bytes]
    stream_content_type: ClassVar[bytes]

    def __init__(self, reply: Reply) -> None:
        self.reply = reply

    def head(self) -> bytes:
        return b""

    def token(self, text: str) -> bytes:
        raise NotImplementedError

    def tail(self) -> bytes:
        raise NotImplementedError

    def error_frame(self, error_type: str, message: str) -> bytes:
        raise NotImplementedError

    def malformed_frame(self) -> bytes:
        raise NotImplementedError

    def complete(self) -> bytes:
        """The non-streamed answer body."""
        raise NotImplementedError

    @staticmethod
    def error_body(status: int, error_type: str, message: str) -> bytes:
        raise NotImplementedError

    @staticmethod
    def error_type(status: int) -> str:
        raise NotImplementedError


class OpenAIFormat(WireFormat):
    name = "openai"
    content_type = b"application/json"
    stream_content_type = b"text/event-stream; charset=utf-8"
    _TYPES = {
        400: "invalid_request_error",
        401: "invalid_request_error",
        403: "permission_denied",
        404: "invalid_request_error",
        429: "requests",
    }

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply)
        self.created = int(time.time())
        self.id = "chatcmpl-" + uuid.uuid4().hex[:24]
        prefix = (
            b'{"id":"%s","object":"chat.completion.chunk","created":%d,"model":%s,'
            b'"system_fingerprint":"fp_fake","choices":['
        ) % (self.id.encode(), self.created, _json(reply.model))
        self._prefix = b"data: " + prefix
        self._suffix = b'],"usage":null}\n\n' if reply.include_usage else b"]}\n\n"

    def _choice(self, delta: bytes, finish: bytes = b"null") -> bytes:
        return (
            self._prefix
            + b'{"index":0,"delta":'
            + delta
            + b',"logprobs":null,"finish_reason":'
            + finish
            + b"}"
            + self._suffix
        )

    @property
    def finish_reason(self) -> str:
        return "length" if self.reply.truncated else "stop"

    def _usage(self) -> dict[str, int]:
        out = len(self.reply.tokens)
        return {
            "prompt_tokens": self.reply.input_tokens,
            "completion_tokens": out,
            "total_tokens": self.reply.input_tokens + out,
        }

    def head(self) -> bytes:
        return self._choice(b'{"role":"assistant","content":"","refusal":null}')

    def token(self, text: str) -> bytes:
        return self._choice(b'{"content":' + _json(text) + b"}")

    def tail(self) -> bytes:
        out = self._choice(b"{}", _json(self.finish_reason))
        if self.reply.include_usage:
            out += self._prefix + b'],"usage":' + _json(self._usage()) + b"}\n\n"
        return out + b"data: [DONE]\n\n"

    def error_frame(self, error_type: str, message: str) -> bytes:
        error = {"message": message, "type": error_type, "param": None, "code": None}
        return b"data: " + _json({"error": error}) + b"\n\n"

    def malformed_frame(self) -> bytes:
        return self._prefix + b'{"index":0,"delta":{"content":"oops\n\n'

    def complete(self) -> bytes:
        return _json(
            {
                "id": self.id,
                "object": "chat.completion",
                "created": self.created,
                "model": self.reply.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": "".join(self.reply.tokens),
                            "refusal": None,
                        },
                        "logprobs": None,
                        "finish_reason": self.finish_reason,
                    }
                ],
                "usage": self._usage(),
                "system_fingerprint": "fp_fake",
            }
        )

    @staticmethod
    def error_type(status: int) -> str:
        return OpenAIFormat._TYPES.get(
            status, "server_error" if status >= 500 else "invalid_request_error"
        )

    @staticmethod
    def error_body(status: int, error_type: str, message: str) -> bytes:
        code = "invalid_api_key" if status == 401 else None
        error = {"message": message, "type": error_type, "param": None, "code": code}
        return _json({"error": error})


class AnthropicFormat(WireFormat):
    name = "anthropic"
    content_type = b"application/json"
    stream_content_type = b"text/event-stream; charset=utf-8"
    _TYPES = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        529: "overloaded_error",
    }

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply)
        self.id = "msg_" + uuid.uuid4().hex[:24]

    @staticmethod
    def _event(name: bytes, data: bytes) -> bytes:
        return b"event: " + name + b"\ndata: " + data + b"\n\n"

    @property
    def stop_reason(self) -> str:
        return "max_tokens" if self.reply.truncated else "end_turn"

    def _message(self, content: list[dict[str, Any]], stop: str | None, out: int) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.reply.model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {
                "input_tokens": self.reply.input_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": out,
            },
        }

    def head(self) -> bytes:
        start = {"type": "message_start", "message": self._message([], None, 1)}
        block = {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "text", "text": ""},
        }
        return (
            self._event(b"message_start", _json(start))
            + self._event(b"content_block_start", _json(block))
            + self._event(b"ping", b'{"type": "ping"}')
        )

    def token(self, text: str) -> bytes:
        return self._event(
            b"content_block_delta",
            b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":'
            + _json(text)
            + b"}}",
        )

    def tail(self) -> bytes:
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": len(self.reply.tokens)},
        }
        return (
            self._event(b"content_block_stop", b'{"type":"content_block_stop","index":0}')
            + self._event(b"message_delta", _json(delta))
            + self._event(b"message_stop", b'{"type":"message_stop"}')
        )

    def error_frame(self, error_type: str, message: str) -> bytes:
        error = {"type": "error", "error": {"type": error_type, "message": message}}
        return self._event(b"error", _json(error))

    def malformed_frame(self) -> bytes:
        return b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{\n\n'

    def complete(self) -> bytes:
        text = "".join(self.reply.tokens)
        content = [{"type": "text", "text": text}]
        return _json(self._message(content, self.stop_reason, len(self.reply.tokens)))

    @staticmethod
    def error_type(status: int) -> str:
        return AnthropicFormat._TYPES.get(
            status, "api_error" if status >= 500 else "invalid_request_error"
        )

    @staticmethod
    def error_body(status: int, error_type: str, message: str) -> bytes:
        return _json({"type": "error", "error": {"type": error_type, "message": message}})


class OllamaFormat(WireFormat):
    name = "ollama"
    content_type = b"application/json; charset=utf-8"
    stream_content_type = b"application/x-ndjson"

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply)
        self._prefix = b'{"model":' + _json(reply.model) + b',"created_at":"'

    def _created(self) -> bytes:
        return time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime()).encode()

    def token(self, text: str) -> bytes:
        return (
            self._prefix
            + self._created()
            + b'","message":{"role":"assistant","content":'
            + _json(text)
            + b'},"done":false}\n'
        )

    def _final(self, content: str) -> dict[str, Any]:
        return {
            "model": self.reply.model,
            "created_at": self._created().decode(),
            "message": {"role": "assistant", "content": content},
            "done_reason": "length" if self.reply.truncated else "stop",
            "done": True,
            "total_duration": 1_000_000,
            "load_duration": 1_000,
            "prompt_eval_count": self.reply.input_tokens,
            "prompt_eval_duration": 1_000,
            "eval_count": len(self.reply.tokens),
            "eval_duration": 1_000_000,
        }

    def tail(self) -> bytes:
        return _json(self._final("")) + b"\n"

    def error_frame(self, error_type: str, message: str) -> bytes:
        return _json({"error": message}) + b"\n"

    def malformed_frame(self) -> bytes:
        return self._prefix + b"oops\n"

    def complete(self) -> bytes:
        return _json(self._final("".join(self.reply.tokens)))

    @staticmethod
    def error_type(status: int) -> str:
        return "error"

    @staticmethod
    def error_body(status: int, error_type: str, message: str) -> bytes:
        return _json({"error": message})


FORMATS: dict[str, type[WireFormat]] = {
    "openai": OpenAIFormat,
    "anthropic": AnthropicFormat,
    "ollama": OllamaFormat,
}
