"""REST: conversations and their message history (``/api/v1/conversations``)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, empty, json
from sanic_ext import openapi

from ..core.doors import ConversationDirectory
from ..core.errors import BadRequest, NotFound, ValidationFailed
from ..core.events import new_conversation_from_object, parse_whole_number
from .schemas import (
    Conversation,
    ConversationCreate,
    ConversationPage,
    MessagePage,
    errors,
    json_body,
    json_response,
    no_content,
)

__all__ = ["conversations_blueprint"]

MAX_PAGE = 200


def _limit(request: Request, default: int = 50) -> int:
    raw = request.args.get("limit")
    if raw is None:
        return default
    value = parse_whole_number(raw, "limit", maximum=MAX_PAGE)
    if value < 1:
        raise ValidationFailed(f"limit must be between 1 and {MAX_PAGE}")
    return value


def _body(request: Request) -> dict[str, Any]:
    if not request.body:
        return {}
    try:
        body = orjson.loads(request.body)
    except orjson.JSONDecodeError:
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def conversations_blueprint(directory: Callable[[], ConversationDirectory]) -> Blueprint:
    """``directory`` gives the core's door for REST (there once the server started)."""
    bp = Blueprint("conversations", url_prefix="/api/v1/conversations")

    @bp.post("/")
    @openapi.summary("Create a conversation")
    @openapi.description(
        "An empty conversation. A conversation can also be created by a first "
        "WebSocket `message.create` without `conversation_id`."
    )
    @json_body(ConversationCreate, "its title and model, both optional")
    @errors(400, 422, 503)
    @json_response(201, Conversation, "the new conversation")
    async def create(request: Request) -> HTTPResponse:
        new = new_conversation_from_object(_body(request))  # the core's one decoder
        # an unknown model -> validation_error
        conversation = await directory().create_conversation(
            request.ctx.user, title=new.title, model=new.model
        )
        return json(conversation.to_wire(), status=201)

    @bp.get("/")
    @openapi.summary("List own conversations, newest first")
    @openapi.parameter("limit", int, description=f"page size, 1 to {MAX_PAGE} (default 50)")
    @openapi.parameter(
        "before", str, description="next_before of the previous page (an updated_at time)"
    )
    @errors(422)
    @json_response(200, ConversationPage, "a page of conversations")
    async def list_(request: Request) -> HTTPResponse:
        limit = _limit(request)
        before_raw = request.args.get("before")
        before = None
        if before_raw:
            try:
                before = datetime.fromisoformat(before_raw.replace("Z", "+00:00"))
            except ValueError:
                raise ValidationFailed("before must be an RFC 3339 time") from None
        items = await directory().list_conversations(request.ctx.user, limit=limit, before=before)
        next_before = items[-1].to_wire()["updated_at"] if len(items) == limit else None
        return json({"items": [c.to_wire() for c in items], "next_before": next_before})

    @bp.get("/<conversation_id:uuid>")
    @openapi.summary("Get a conversation")
    @errors(404)
    @json_response(200, Conversation, "the conversation")
    async def get(request: Request, conversation_id: Any) -> HTTPResponse:
        conversation = await directory().get_conversation(request.ctx.user, str(conversation_id))
        if conversation is None:
            raise NotFound("no such conversation")
        return json(conversation.to_wire())

    @bp.delete("/<conversation_id:uuid>")
    @openapi.summary("Delete a conversation; its running replies are cancelled")
    @errors(404)
    @no_content(204, "deleted, with its messages")
    async def delete(request: Request, conversation_id: Any) -> HTTPResponse:
        # its running replies are stopped first
        if not await directory().delete_conversation(request.ctx.user, str(conversation_id)):
            raise NotFound("no such conversation")
        return empty(status=204)

    @bp.get("/<conversation_id:uuid>/messages")
    @openapi.summary("A page of messages, oldest first within the page")
    @openapi.description(
        "The first page holds the latest messages; `next_before` pages back in time. "
        'A running reply shows `status: "streaming"` and its last checkpoint.'
    )
    @openapi.parameter("limit", int, description=f"page size, 1 to {MAX_PAGE} (default 50)")
    @openapi.parameter("before", str, description="a message id: the page ends before it")
    @errors(404, 422)
    @json_response(200, MessagePage, "a page of messages")
    async def messages(request: Request, conversation_id: Any) -> HTTPResponse:
        limit = _limit(request)
        before = request.args.get("before") or None
        items = await directory().list_messages(
            request.ctx.user, str(conversation_id), limit=limit, before=before
        )
        if items is None:
            raise NotFound("no such conversation")
        next_before = items[0].id if len(items) == limit else None
        return json({"items": [m.to_wire() for m in items], "next_before": next_before})

    return bp
