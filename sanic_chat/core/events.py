"""The wire frames, typed. Client input is decoded and validated here and only
here (:func:`decode_client_frame`, :func:`frame_from_object` for an HTTP body's
fields, :func:`new_conversation_from_object` for REST's new conversation), NUL
included; everything after works on these types.

The same JSON object is sent for an event on every transport. ``offset`` counts
Unicode code points (Python ``len(str)``) so that Python and JavaScript clients
agree on where a piece of text starts.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson

from .errors import BadRequest, TooLarge, UnknownType, ValidationFailed
from .records import ErrorInfo, Message, Usage, message_from_wire

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
    "NewConversation",
    "Ping",
    "Pong",
    "ServerEvent",
    "TerminalEvent",
    "decode_client_frame",
    "encode_event",
    "frame_from_object",
    "new_conversation_from_object",
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

#: event fields that hold a record: written as the record's own ``to_wire``
_RECORD_FIELDS = frozenset({"message", "usage", "error"})


class _Event:
    """An event's JSON object: ``type``, then every field in declaration order
    (``__match_args__``, which the dataclass writes), a record nested as its
    own ``to_wire``."""

    __slots__ = ()
    type: ClassVar[str]
    __match_args__: ClassVar[tuple[str, ...]]

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"type": self.type}
        for name in self.__match_args__:
            value = getattr(self, name)
            wire[name] = value.to_wire() if name in _RECORD_FIELDS else value
        return wire


class _Terminal(_Event):
    """A reply's last event: it carries the whole reply, so it ends where the reply does."""

    __slots__ = ()
    message: Message

    @property
    def end_offset(self) -> int:
        return len(self.message.content)


@dataclass(frozen=True, slots=True)
class MessageAccepted(_Event):
    type: ClassVar[str] = "message.accepted"
    client_id: str
    conversation_id: str
    message: Message
    #: addition to the contract: the reply started for this message (None if none)
    generation_id: str | None = None


@dataclass(frozen=True, slots=True)
class GenerationStarted(_Event):
    type: ClassVar[str] = "generation.started"
    generation_id: str
    conversation_id: str
    message_id: str
    reply_to: str | None
    model: str | None

    @property
    def end_offset(self) -> int:
        return 0


@dataclass(frozen=True, slots=True)
class GenerationDelta(_Event):
    type: ClassVar[str] = "generation.delta"
    generation_id: str
    offset: int
    text: str

    @property
    def end_offset(self) -> int:
        return self.offset + len(self.text)

    def to_wire(self) -> dict[str, Any]:
        # written out, not the loop: one per delta, the hot path of every reply
        return {
            "type": self.type,
            "generation_id": self.generation_id,
            "offset": self.offset,
            "text": self.text,
        }


@dataclass(frozen=True, slots=True)
class GenerationCompleted(_Terminal):
    type: ClassVar[str] = "generation.completed"
    generation_id: str
    message: Message
    usage: Usage
    finish_reason: str | None


@dataclass(frozen=True, slots=True)
class GenerationCancelled(_Terminal):
    type: ClassVar[str] = "generation.cancelled"
    generation_id: str
    message: Message


@dataclass(frozen=True, slots=True)
class GenerationFailed(_Terminal):
    type: ClassVar[str] = "generation.failed"
    generation_id: str
    message: Message
    error: ErrorInfo


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
class Pong(_Event):
    type: ClassVar[str] = "pong"


TerminalEvent = GenerationCompleted | GenerationCancelled | GenerationFailed
GenerationEvent = GenerationStarted | GenerationDelta | TerminalEvent
ServerEvent = MessageAccepted | GenerationEvent | ErrorEvent | Pong

TERMINAL_TYPES = (GenerationCompleted, GenerationCancelled, GenerationFailed)
GENERATION_TYPES = (GenerationStarted, GenerationDelta, *TERMINAL_TYPES)


def encode_event(event: ServerEvent) -> bytes:
    """The one JSON encoding of an event, identical on every transport."""
    return orjson.dumps(event.to_wire())


def _completed(wire: dict[str, Any]) -> GenerationCompleted:
    usage = wire.get("usage") or {}
    return GenerationCompleted(
        wire["generation_id"],
        message_from_wire(wire["message"]),
        Usage(usage.get("input_tokens"), usage.get("output_tokens")),
        wire.get("finish_reason"),
    )


#: event type -> how its JSON object becomes the event again
_FROM_WIRE: dict[str, Callable[[dict[str, Any]], ServerEvent]] = {
    GenerationDelta.type: lambda w: GenerationDelta(w["generation_id"], w["offset"], w["text"]),
    GenerationStarted.type: lambda w: GenerationStarted(
        w["generation_id"], w["conversation_id"], w["message_id"], w.get("reply_to"), w.get("model")
    ),
    GenerationCompleted.type: _completed,
    GenerationCancelled.type: lambda w: GenerationCancelled(
        w["generation_id"], message_from_wire(w["message"])
    ),
    GenerationFailed.type: lambda w: GenerationFailed(
        w["generation_id"],
        message_from_wire(w["message"]),
        ErrorInfo(w["error"]["code"], w["error"]["message"]),
    ),
    MessageAccepted.type: lambda w: MessageAccepted(
        w["client_id"],
        w["conversation_id"],
        message_from_wire(w["message"]),
        w.get("generation_id"),
    ),
    ErrorEvent.type: lambda w: ErrorEvent(w["code"], w["message"], w.get("ref")),
    Pong.type: lambda w: Pong(),
}


def event_from_wire(wire: dict[str, Any]) -> ServerEvent:
    """Rebuild a server event from its JSON object (the Redis bus carries JSON)."""
    kind = wire["type"]
    build = _FROM_WIRE.get(kind)
    if build is None:
        raise ValueError(f"not a server event type: {kind!r}")
    return build(wire)


# --------------------------------------------------------------------------- decoding


def _as_uuid(value: Any, field: str, ref: str | None) -> str:
    if not isinstance(value, str) or len(value) > 64:
        raise ValidationFailed(f"{field} must be a UUID string", ref=ref)
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ValidationFailed(f"{field} must be a UUID string", ref=ref) from None


def _uuid(obj: dict[str, Any], field: str, ref: str | None) -> str:
    value = obj.get(field)
    if value is None:
        raise ValidationFailed(f"{field} is required", ref=ref)
    return _as_uuid(value, field, ref)


def _optional_uuid(obj: dict[str, Any], field: str, ref: str | None) -> str | None:
    value = obj.get(field)
    return None if value is None else _as_uuid(value, field, ref)


def _optional_str(obj: dict[str, Any], field: str, ref: str | None, max_len: int) -> str | None:
    value = obj.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise ValidationFailed(f"{field} must be a non-empty string", ref=ref)
    return value


def _refuse_nul(value: str, field: str, ref: str | None) -> None:
    # PostgreSQL text cannot hold NUL: refused here, so alike on every database
    if "\x00" in value:
        raise ValidationFailed(f"{field} must not contain NUL characters", ref=ref)


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


def _offset(obj: dict[str, Any], ref: str | None) -> int | None:
    value = obj.get("offset")
    if value is None:
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


def _message_create(obj: dict[str, Any], ref: str | None, max_content_chars: int) -> MessageCreate:
    client_id = _uuid(obj, "client_id", ref)
    content = obj.get("content")
    if not isinstance(content, str) or not content.strip():
        raise ValidationFailed("content must be a non-empty string", ref=ref)
    if len(content) > max_content_chars:
        raise TooLarge(f"content is longer than {max_content_chars} characters", ref=ref)
    conversation_id = _optional_uuid(obj, "conversation_id", ref)
    model = _optional_str(obj, "model", ref, 200)
    _refuse_nul(content, "content", client_id)
    return MessageCreate(client_id, content, conversation_id, model)


def _conversation_subscribe(obj: dict[str, Any], ref: str | None, _: int) -> ConversationSubscribe:
    conversation_id = _uuid(obj, "conversation_id", ref)
    generation_id = _optional_uuid(obj, "generation_id", ref)
    offset = _offset(obj, ref)
    if offset is not None and generation_id is None:
        raise ValidationFailed("offset needs generation_id", ref=ref)
    return ConversationSubscribe(
        conversation_id, generation_id, offset or 0 if generation_id else None
    )


#: frame type -> its decoder (the object, the ref for errors, the content limit)
_DECODERS: dict[str, Callable[[dict[str, Any], str | None, int], ClientFrame]] = {
    MessageCreate.type: _message_create,
    GenerationCancel.type: lambda obj, ref, _: GenerationCancel(_uuid(obj, "generation_id", ref)),
    GenerationResume.type: lambda obj, ref, _: GenerationResume(
        _uuid(obj, "generation_id", ref), _offset(obj, ref) or 0
    ),
    ConversationSubscribe.type: _conversation_subscribe,
    ConversationUnsubscribe.type: lambda obj, ref, _: ConversationUnsubscribe(
        _uuid(obj, "conversation_id", ref)
    ),
    Ping.type: lambda obj, ref, _: Ping(),
}


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
    decode = _DECODERS.get(kind)
    if decode is None:
        raise UnknownType(f"unknown frame type {kind[:64]!r}", ref=ref)
    return decode(obj, ref, max_content_chars)


# --------------------------------------------------------------------------- REST bodies

#: the longest title and model name ``POST /api/v1/conversations`` takes
MAX_TITLE_CHARS = 500
MAX_MODEL_CHARS = 200


@dataclass(frozen=True, slots=True)
class NewConversation:
    """The body of ``POST /api/v1/conversations``, validated (REST only: no frame)."""

    title: str | None = None
    model: str | None = None


def _optional_text(obj: dict[str, Any], field: str, max_len: int) -> str | None:
    value = obj.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_len:
        raise ValidationFailed(f"{field} must be a string of at most {max_len} characters")
    _refuse_nul(value, field, None)
    return value


def new_conversation_from_object(obj: dict[str, Any]) -> NewConversation:
    """Validate the (parsed, JSON object) body of a new conversation."""
    model = _optional_text(obj, "model", MAX_MODEL_CHARS)
    return NewConversation(title=_optional_text(obj, "title", MAX_TITLE_CHARS), model=model)
