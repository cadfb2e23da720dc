"""The wire frames, typed. Client frames are decoded and validated here and only
here (:func:`decode_client_frame`); everything after works on these types.

The same JSON object is sent for an event on every transport. ``offset`` counts
Unicode code points (Python ``len(str)``) so that Python and JavaScript clients
agree on where a piece of text starts.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson

from .errors import BadRequest, TooLarge, UnknownType, ValidationFailed
from .records import ErrorInfo, Message, Usage

__all__ = [
    "ClientFrame",
    "ConversationSubscribe",
    "ConversationUnsubscribe",
    "ErrorEvent",
    "GenerationCancel",
    "GenerationCancelled",
    "GenerationCompleted",
    "GenerationDelta",
    "GenerationEvent",
    "GenerationFailed",
    "GenerationResume",
    "GenerationStarted",
    "MessageAccepted",
    "MessageCreate",
    "Ping",
    "Pong",
    "ServerEvent",
    "TerminalEvent",
    "decode_client_frame",
    "encode_event",
    "frame_from_object",
    "parse_whole_number",
]

# --------------------------------------------------------------------------- client


@dataclass(frozen=True, slots=True)
class MessageCreate:
    type: ClassVar[str] = "message.create"
    client_id: str
    content: str
    conversation_id: str | None = None
    model: str | None = None


@dataclass(frozen=True, slots=True)
class GenerationCancel:
    type: ClassVar[str] = "generation.cancel"
    generation_id: str


@dataclass(frozen=True, slots=True)
class ConversationSubscribe:
    type: ClassVar[str] = "conversation.subscribe"
    conversation_id: str
    generation_id: str | None = None
    offset: int | None = None


@dataclass(frozen=True, slots=True)
class ConversationUnsubscribe:
    """Addition to the contract: stop receiving a conversation's events on this
    connection (a client that switches conversations). Replies keep running."""

    type: ClassVar[str] = "conversation.unsubscribe"
    conversation_id: str


@dataclass(frozen=True, slots=True)
class GenerationResume:
    type: ClassVar[str] = "generation.resume"
    generation_id: str
    offset: int = 0


@dataclass(frozen=True, slots=True)
class Ping:
    type: ClassVar[str] = "ping"


ClientFrame = (
    MessageCreate
    | GenerationCancel
    | ConversationSubscribe
    | ConversationUnsubscribe
    | GenerationResume
    | Ping
)

# --------------------------------------------------------------------------- server


@dataclass(frozen=True, slots=True)
class MessageAccepted:
    type: ClassVar[str] = "message.accepted"
    client_id: str
    conversation_id: str
    message: Message
    #: addition to the contract: the reply started for this message (None if none)
    generation_id: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "client_id": self.client_id,
            "conversation_id": self.conversation_id,
            "message": self.message.to_wire(),
            "generation_id": self.generation_id,
        }


@dataclass(frozen=True, slots=True)
class GenerationStarted:
    type: ClassVar[str] = "generation.started"
    generation_id: str
    conversation_id: str
    message_id: str
    reply_to: str | None
    model: str | None

    @property
    def end_offset(self) -> int:
        return 0

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "generation_id": self.generation_id,
            "conversation_id": self.conversation_id,
            "message_id": self.message_id,
            "reply_to": self.reply_to,
            "model": self.model,
        }


@dataclass(frozen=True, slots=True)
class GenerationDelta:
    type: ClassVar[str] = "generation.delta"
    generation_id: str
    offset: int
    text: str

    @property
    def end_offset(self) -> int:
        return self.offset + len(self.text)

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "generation_id": self.generation_id,
            "offset": self.offset,
            "text": self.text,
        }


@dataclass(frozen=True, slots=True)
class GenerationCompleted:
    type: ClassVar[str] = "generation.completed"
    generation_id: str
    message: Message
    usage: Usage
    finish_reason: str | None

    @property
    def end_offset(self) -> int:
        return len(self.message.content)

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "generation_id": self.generation_id,
            "message": self.message.to_wire(),
            "usage": self.usage.to_wire(),
            "finish_reason": self.finish_reason,
        }


@dataclass(frozen=True, slots=True)
class GenerationCancelled:
    type: ClassVar[str] = "generation.cancelled"
    generation_id: str
    message: Message

    @property
    def end_offset(self) -> int:
        return len(self.message.content)

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "generation_id": self.generation_id,
            "message": self.message.to_wire(),
        }


@dataclass(frozen=True, slots=True)
class GenerationFailed:
    type: ClassVar[str] = "generation.failed"
    generation_id: str
    message: Message
    error: ErrorInfo

    @property
    def end_offset(self) -> int:
        return len(self.message.content)

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "generation_id": self.generation_id,
            "message": self.message.to_wire(),
            "error": self.error.to_wire(),
        }


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    type: ClassVar[str] = "error"
    code: str
    message: str
    ref: str | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"type": self.type, "code": self.code, "message": self.message}
        if self.ref is not None:
            wire["ref"] = self.ref
        return wire


@dataclass(frozen=True, slots=True)
class Pong:
    type: ClassVar[str] = "pong"

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.type}


TerminalEvent = GenerationCompleted | GenerationCancelled | GenerationFailed
GenerationEvent = GenerationStarted | GenerationDelta | TerminalEvent
ServerEvent = MessageAccepted | GenerationEvent | ErrorEvent | Pong

TERMINAL_TYPES = (GenerationCompleted, GenerationCancelled, GenerationFailed)
GENERATION_TYPES = (GenerationStarted, GenerationDelta, *TERMINAL_TYPES)


def encode_event(event: ServerEvent) -> bytes:
    """The one JSON encoding of an event, identical on every transport."""
    return orjson.dumps(event.to_wire())


def event_from_wire(wire: dict[str, Any]) -> ServerEvent:
    """Rebuild a server event from its JSON object (the Redis bus carries JSON)."""
    from .records import message_from_wire  # local: keeps the hot path import-free

    kind = wire["type"]
    if kind == "generation.delta":
        return GenerationDelta(wire["generation_id"], wire["offset"], wire["text"])
    if kind == "generation.started":
        return GenerationStarted(
            wire["generation_id"],
            wire["conversation_id"],
            wire["message_id"],
            wire.get("reply_to"),
            wire.get("model"),
        )
    if kind == "generation.completed":
        usage = wire.get("usage") or {}
        return GenerationCompleted(
            wire["generation_id"],
            message_from_wire(wire["message"]),
            Usage(usage.get("input_tokens"), usage.get("output_tokens")),
            wire.get("finish_reason"),
        )
    if kind == "generation.cancelled":
        return GenerationCancelled(wire["generation_id"], message_from_wire(wire["message"]))
    if kind == "generation.failed":
        error = wire["error"]
        return GenerationFailed(
            wire["generation_id"],
            message_from_wire(wire["message"]),
            ErrorInfo(error["code"], error["message"]),
        )
    if kind == "message.accepted":
        return MessageAccepted(
            wire["client_id"],
            wire["conversation_id"],
            message_from_wire(wire["message"]),
            wire.get("generation_id"),
        )
    if kind == "error":
        return ErrorEvent(wire["code"], wire["message"], wire.get("ref"))
    if kind == "pong":
        return Pong()
    raise ValueError(f"not a server event type: {kind!r}")


# --------------------------------------------------------------------------- decoding


def _uuid(obj: dict[str, Any], field: str, ref: str | None, *, required: bool = True) -> str | None:
    value = obj.get(field)
    if value is None:
        if required:
            raise ValidationFailed(f"{field} is required", ref=ref)
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise ValidationFailed(f"{field} must be a UUID string", ref=ref)
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ValidationFailed(f"{field} must be a UUID string", ref=ref) from None


def _optional_str(obj: dict[str, Any], field: str, ref: str | None, max_len: int) -> str | None:
    value = obj.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise ValidationFailed(f"{field} must be a non-empty string", ref=ref)
    return value


#: the largest offset: a JSON number JavaScript still holds exactly
MAX_OFFSET = 2**53
_ASCII_DIGITS = frozenset("0123456789")


def parse_whole_number(raw: str, field: str, *, maximum: int = MAX_OFFSET) -> int:
    """A whole number written as text (a query parameter, ``Last-Event-ID``):
    ASCII digits only, at most ``maximum``, else :class:`ValidationFailed`.

    The one parser for numbers that arrive as text. Python's ``int()`` alone
    would take ``"٣"`` (any Unicode digit), ``" 3"``, ``"+3"`` and ``"1_0"``, and
    raises a ``ValueError`` past 4,300 digits; the length is checked before any
    conversion, so the work done is bounded whatever the input.
    """
    if not raw or len(raw) > len(str(maximum)) or not _ASCII_DIGITS.issuperset(raw):
        raise ValidationFailed(f"{field} must be a whole number of at most {maximum}")
    value = int(raw)
    if value > maximum:
        raise ValidationFailed(f"{field} must be a whole number of at most {maximum}")
    return value


def _offset(obj: dict[str, Any], ref: str | None, *, required: bool) -> int | None:
    value = obj.get("offset")
    if value is None:
        if required:
            raise ValidationFailed("offset is required", ref=ref)
        return None
    # bool is an int in Python; a JSON true is not an offset
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value > MAX_OFFSET:
        raise ValidationFailed("offset must be a non-negative integer", ref=ref)
    return value


def _ref_of(obj: dict[str, Any]) -> str | None:
    for field in ("client_id", "generation_id", "conversation_id"):
        value = obj.get(field)
        if isinstance(value, str) and len(value) <= 64:
            return value
    return None


def decode_client_frame(raw: str | bytes, *, max_content_chars: int = 32_000) -> ClientFrame:
    """Decode one client frame, or raise a :class:`ClientError` saying what is wrong.

    Any input whatsoever ends in a typed frame or a typed error; nothing else
    escapes (the fuzz tests hold this function to that).
    """
    try:
        obj = orjson.loads(raw)
    except (orjson.JSONDecodeError, UnicodeDecodeError, TypeError, RecursionError):
        raise BadRequest("frame is not valid JSON") from None
    return frame_from_object(obj, max_content_chars=max_content_chars)


def frame_from_object(obj: Any, *, max_content_chars: int = 32_000) -> ClientFrame:
    """Validate an already-parsed JSON value as a client frame (the HTTP
    endpoints build frames from their bodies with this, so there is still
    one validator)."""
    if not isinstance(obj, dict):
        raise BadRequest("frame must be a JSON object")
    ref = _ref_of(obj)
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ValidationFailed("type is required and must be a string", ref=ref)

    if kind == "message.create":
        client_id = _uuid(obj, "client_id", ref)
        assert client_id is not None
        content = obj.get("content")
        if not isinstance(content, str) or not content.strip():
            raise ValidationFailed("content must be a non-empty string", ref=ref)
        if len(content) > max_content_chars:
            raise TooLarge(f"content is longer than {max_content_chars} characters", ref=ref)
        return MessageCreate(
            client_id=client_id,
            content=content,
            conversation_id=_uuid(obj, "conversation_id", ref, required=False),
            model=_optional_str(obj, "model", ref, 200),
        )
    if kind == "generation.cancel":
        generation_id = _uuid(obj, "generation_id", ref)
        assert generation_id is not None
        return GenerationCancel(generation_id)
    if kind == "generation.resume":
        generation_id = _uuid(obj, "generation_id", ref)
        assert generation_id is not None
        offset = _offset(obj, ref, required=False)
        return GenerationResume(generation_id, offset or 0)
    if kind == "conversation.subscribe":
        conversation_id = _uuid(obj, "conversation_id", ref)
        assert conversation_id is not None
        generation_id = _uuid(obj, "generation_id", ref, required=False)
        offset = _offset(obj, ref, required=False)
        if offset is not None and generation_id is None:
            raise ValidationFailed("offset needs generation_id", ref=ref)
        return ConversationSubscribe(
            conversation_id, generation_id, offset or 0 if generation_id else None
        )
    if kind == "conversation.unsubscribe":
        conversation_id = _uuid(obj, "conversation_id", ref)
        assert conversation_id is not None
        return ConversationUnsubscribe(conversation_id)
    if kind == "ping":
        return Ping()
    raise UnknownType(f"unknown frame type {kind[:64]!r}", ref=ref)
