"""The shapes of the HTTP API's bodies, for its OpenAPI description (``/docs``).

These dataclasses only *describe* what the handlers read and write: the
validation stays in the core's one decoder (``core.events.frame_from_object``,
``new_conversation_from_object``), and the records' ``to_wire`` build the
answers. ``tests/api`` checks the two agree by holding real answers against
these schemas.

sanic-ext reads a dataclass as a component without marking any field required
and renders ``Literal`` as an object, so :func:`component` writes each schema
itself: required fields are those without a default, ``Literal`` becomes an
``enum``, a nested dataclass a ``$ref``, ``X | None`` ``nullable``, and
``field(metadata={"openapi": {...}})`` adds keywords (description, format, ...).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable
from datetime import datetime
from typing import (
    Any,
    Literal,
    TypeVar,
    Union,
    dataclass_transform,
    get_args,
    get_origin,
    get_type_hints,
)

from sanic_ext import openapi
from sanic_ext.extensions.openapi.builders import OperationStore, SpecificationBuilder
from sanic_ext.extensions.openapi.definitions import Response

from ..core.records import Role, Status

__all__ = [
    "ERROR_CODES",
    "Conversation",
    "ConversationCreate",
    "ConversationPage",
    "Error",
    "Message",
    "MessageAccepted",
    "MessageCreate",
    "MessagePage",
    "ModelList",
    "Readiness",
    "Ticket",
    "errors",
    "json_body",
    "json_response",
    "no_content",
    "register_components",
]

T = TypeVar("T")

#: every dataclass registered as a component, in definition order
_COMPONENTS: list[type[Any]] = []


def _doc(text: str, **keywords: Any) -> dict[str, Any]:
    return {"openapi": {"description": text, **keywords}}


@dataclass_transform(field_specifiers=(dataclasses.field,))
def component(cls: type[T]) -> type[T]:
    """Make a class a dataclass and a component schema (registered by
    :func:`register_components`)."""
    described = dataclasses.dataclass(cls)
    _COMPONENTS.append(described)
    return described


def _page(item: type[Any], doc: str, next_before: str) -> type[Any]:
    """A page of ``item``: its ``items`` and the cursor to the next page."""
    page = dataclasses.make_dataclass(
        f"{item.__name__}Page",
        [
            ("items", list[item]),  # type: ignore[valid-type]
            ("next_before", str | None, dataclasses.field(metadata=_doc(next_before))),
        ],
        namespace={"__doc__": doc},
    )
    _COMPONENTS.append(page)
    return page


def _ref(cls: type[Any]) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{cls.__name__}"}


def _schema(hint: Any) -> dict[str, Any]:
    origin = get_origin(hint)
    args = get_args(hint)
    if origin in (Union, types.UnionType):
        rest = [arg for arg in args if arg is not type(None)]
        assert len(rest) == 1, f"only X | None is described: {hint}"
        inner = _schema(rest[0])
        if "$ref" in inner:  # OpenAPI 3.0 ignores keywords beside a $ref
            return {"allOf": [inner], "nullable": True}
        return {**inner, "nullable": True}
    if origin is Literal:
        return {"type": "string", "enum": list(args)}
    if origin is list:
        return {"type": "array", "items": _schema(args[0])}
    if origin is dict:
        return {"type": "object", "additionalProperties": _schema(args[1])}
    if dataclasses.is_dataclass(hint):
        return _ref(hint)  # type: ignore[arg-type]
    if hint is datetime:
        return {"type": "string", "format": "date-time"}
    # str, int, bool: sanic-ext's own reading
    return dict(openapi.Schema.make(hint).serialize())


def _component_schema(cls: type[Any]) -> dict[str, Any]:
    hints = get_type_hints(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for field in dataclasses.fields(cls):
        schema = _schema(hints[field.name])
        extra = dict(field.metadata.get("openapi", {}))
        if "$ref" in schema and extra:
            schema = {"allOf": [schema]}
        properties[field.name] = {**schema, **extra}
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            required.append(field.name)
    described: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        described["required"] = required
    if cls.__doc__:
        described["description"] = " ".join(cls.__doc__.split())
    return described


def register_components() -> None:
    """Put every component into sanic-ext's specification (a process-wide
    singleton, so registering again is harmless)."""
    spec = SpecificationBuilder()
    for cls in _COMPONENTS:
        spec.add_component("schemas", cls.__name__, _component_schema(cls))


def json_body(cls: type[Any], description: str) -> Callable[[T], T]:
    """``openapi.body`` naming a component: the body is described, not validated."""
    return openapi.body(  # type: ignore[no-any-return]
        {"application/json": {"schema": _ref(cls)}}, description=description, required=True
    )


def json_response(status: int, cls: type[Any], description: str) -> Callable[[T], T]:
    return openapi.response(status, {"application/json": {"schema": _ref(cls)}}, description)


def no_content(status: int, description: str) -> Callable[[T], T]:
    """A response without a body (204, or 101 for an upgrade): ``openapi.response``
    would always add a ``*/*`` content."""

    def decorate(handler: T) -> T:
        OperationStore()[handler].responses[status] = Response(description=description)
        return handler

    return decorate


#: what each error status means across the API (docs/protocol.md, Errors)
_ERROR_MEANINGS = {
    400: "bad_request: the body is not JSON, or not a JSON object",
    401: "unauthorized: no valid token (SANIC_CHAT_AUTH=jwt)",
    403: "unauthorized: an origin or host that may not use the API",
    404: "not_found: no such conversation or generation, or another user's",
    409: "conflict: a reply is already running in that conversation; nothing was stored",
    413: "too_large: content longer than SANIC_CHAT_MAX_CONTENT_CHARS, or a body too large",
    422: "validation_error: a field is missing or wrong",
    429: "rate_limited: too many requests; Retry-After says when to retry",
    503: (
        "unavailable: the database or the bus cannot be reached; send again with the same "
        "client_id (the message says whether it may have been stored)"
    ),
}


def errors(*statuses: int) -> Callable[[T], T]:
    """Document the error answers an operation can give, all ``Error`` bodies."""

    def decorate(handler: T) -> T:
        for status in statuses:
            meaning = _ERROR_MEANINGS[status]
            code, _, message = meaning.partition(": ")
            example = {"error": {"code": code, "message": message}}
            content = {"application/json": {"schema": _ref(Error), "example": example}}
            handler = openapi.response(status, content, meaning)(handler)
        return handler

    return decorate


# ------------------------------------------------------------------ errors

ERROR_CODES = Literal[
    "bad_request",
    "unknown_type",
    "validation_error",
    "unauthorized",
    "not_found",
    "conflict",
    "rate_limited",
    "too_large",
    "unavailable",
    "internal",
]


@component
class ErrorDetail:
    """A stable code, and a message for people."""

    code: ERROR_CODES
    message: str


@component
class Error:
    """Every HTTP error answers this body (docs/protocol.md, Errors)."""

    error: ErrorDetail


# ------------------------------------------------------------------ conversations


@component
class ConversationCreate:
    """A new conversation; both fields may be left out."""

    title: str | None = dataclasses.field(
        default=None, metadata=_doc("at most 500 characters, no NUL", maxLength=500)
    )
    model: str | None = dataclasses.field(
        default=None,
        metadata=_doc("a configured model's name (GET /api/v1/models); default: the default model"),
    )


@component
class Conversation:
    """A conversation of the calling user."""

    id: str = dataclasses.field(metadata=_doc("the conversation id", format="uuid"))
    title: str | None
    model: str | None = dataclasses.field(metadata=_doc("its model; null: the default"))
    created_at: datetime
    updated_at: datetime = dataclasses.field(
        metadata=_doc("the last message's time; lists are sorted by it, newest first")
    )


ConversationPage = _page(
    Conversation,
    "A page of conversations, newest first.",
    "pass as ?before= for the next page; null on the last page",
)


# ------------------------------------------------------------------ messages


@component
class Usage:
    """Tokens the model reported for a reply."""

    input_tokens: int
    output_tokens: int


@component
class MessageError:
    """Why a reply failed or was interrupted."""

    code: str = dataclasses.field(metadata=_doc("provider_error, provider_timeout, ..."))
    message: str


@component
class Message:
    """A message (docs/protocol.md, The message object). A user message
    carries ``client_id``; an assistant message ``reply_to`` and, once known,
    ``finish_reason``, ``usage`` and (failed or interrupted) ``error``."""

    id: str = dataclasses.field(
        metadata=_doc("for an assistant message, also its generation id", format="uuid")
    )
    conversation_id: str = dataclasses.field(metadata={"openapi": {"format": "uuid"}})
    role: Role
    content: str = dataclasses.field(
        metadata=_doc("the text; a streaming reply shows its last checkpoint")
    )
    status: Status
    model: str | None
    created_at: datetime
    completed_at: datetime | None
    client_id: str | None = dataclasses.field(
        default=None, metadata=_doc("user messages: the idempotency key the client chose")
    )
    reply_to: str | None = dataclasses.field(
        default=None, metadata=_doc("assistant messages: the user message answered")
    )
    finish_reason: str | None = None
    usage: Usage | None = None
    error: MessageError | None = None


MessagePage = _page(
    Message,
    "A page of messages, oldest first within the page.",
    "pass as ?before= for the previous page; null on the first page",
)


@component
class MessageCreate:
    """A user message; its reply starts at once. Idempotent on ``client_id``."""

    client_id: str = dataclasses.field(
        metadata=_doc(
            "a UUID the client makes up: sending again with it answers the same message",
            format="uuid",
        )
    )
    content: str = dataclasses.field(
        metadata=_doc(
            "non-empty; at most SANIC_CHAT_MAX_CONTENT_CHARS characters (413 beyond)",
            minLength=1,
        )
    )
    model: str | None = dataclasses.field(
        default=None, metadata=_doc("a configured model's name; default: the conversation's")
    )


@component
class MessageAccepted:
    """The stored user message and the id of the reply now running."""

    message: Message
    generation_id: str = dataclasses.field(
        metadata=_doc(
            "the reply: follow it on GET /api/v1/generations/{generation_id}/events",
            format="uuid",
        )
    )
    conversation_id: str = dataclasses.field(metadata={"openapi": {"format": "uuid"}})
    created: bool = dataclasses.field(
        metadata=_doc("false when this client_id was already stored (a resend)")
    )


@component
class CancelAccepted:
    """Stop was taken; the terminal event follows on the streams."""

    generation_id: str = dataclasses.field(metadata={"openapi": {"format": "uuid"}})
    status: Status = dataclasses.field(metadata=_doc("the reply's status when Stop arrived"))


# ------------------------------------------------------------------ the rest


@component
class ModelInfo:
    """A configured model; never its key, URL or headers."""

    name: str = dataclasses.field(metadata=_doc("what message.create's model names"))
    provider: str
    model: str | None = dataclasses.field(metadata=_doc("the upstream model id"))
    default: bool


@component
class Limits:
    """Sizes a client can check before sending (docs/protocol.md, REST endpoints)."""

    max_content_chars: int
    max_frame_bytes: int
    max_body_bytes: int


@component
class ModelList:
    """The configured models."""

    default: str = dataclasses.field(metadata=_doc("the model used when none is named"))
    items: list[ModelInfo]
    limits: Limits | None = None


@component
class Ticket:
    """A one-time ticket for ``?ticket=`` on ``/ws`` or an SSE stream."""

    ticket: str
    expires_in: float = dataclasses.field(metadata=_doc("seconds until it expires"))
    expires_at: datetime


@component
class Health:
    """The process answers."""

    status: Literal["ok"]


@component
class Readiness:
    """Whether this process should get traffic, and why not."""

    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = dataclasses.field(
        metadata=_doc('database, bus: "ok" or why not; server: "ok" or "draining"')
    )
