"""What the store keeps, as the core sees it: conversations and messages.

These are plain frozen values; the store maps them to and from rows, the wire
codec maps them to JSON. ``generation_id`` is always the assistant message id.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

Role = Literal["user", "assistant", "system"]
Status = Literal["complete", "streaming", "cancelled", "failed", "interrupted"]

#: statuses after which a message never changes again
FINAL_STATUSES: frozenset[str] = frozenset({"complete", "cancelled", "failed", "interrupted"})


def utcnow() -> datetime:
    return datetime.now(UTC)


def rfc3339(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int | None = None
    output_tokens: int | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    code: str
    message: str

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True, slots=True)
class Conversation:
    id: str
    owner: str
    title: str | None
    model: str | None
    created_at: datetime
    updated_at: datetime

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "model": self.model,
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at),
        }


@dataclass(frozen=True, slots=True)
class Message:
    id: str
    conversation_id: str
    role: Role
    content: str
    status: Status
    model: str | None
    created_at: datetime
    completed_at: datetime | None = None
    reply_to: str | None = None
    client_id: str | None = None
    usage: Usage | None = None
    finish_reason: str | None = None
    error: ErrorInfo | None = None

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "id": self.id,
            "conversation_id": self.conversation_id,
            "role": self.role,
            "content": self.content,
            "status": self.status,
            "model": self.model,
            "created_at": rfc3339(self.created_at),
            "completed_at": rfc3339(self.completed_at),
        }
        if self.role == "assistant":
            wire["reply_to"] = self.reply_to
            if self.finish_reason is not None:
                wire["finish_reason"] = self.finish_reason
            if self.usage is not None:
                wire["usage"] = self.usage.to_wire()
            if self.error is not None:
                wire["error"] = self.error.to_wire()
        else:
            wire["client_id"] = self.client_id
        return wire


def _parse_time(value: Any) -> datetime | None:
    if value is None:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def message_from_wire(wire: dict[str, Any]) -> Message:
    """Inverse of :meth:`Message.to_wire` (the Redis bus carries messages as JSON)."""
    usage = wire.get("usage")
    error = wire.get("error")
    created = _parse_time(wire.get("created_at"))
    return Message(
        id=wire["id"],
        conversation_id=wire["conversation_id"],
        role=wire["role"],
        content=wire["content"],
        status=wire["status"],
        model=wire.get("model"),
        created_at=created if created is not None else utcnow(),
        completed_at=_parse_time(wire.get("completed_at")),
        reply_to=wire.get("reply_to"),
        client_id=wire.get("client_id"),
        usage=Usage(usage.get("input_tokens"), usage.get("output_tokens")) if usage else None,
        finish_reason=wire.get("finish_reason"),
        error=ErrorInfo(error["code"], error["message"]) if error else None,
    )


def title_from(content: str, max_chars: int = 80) -> str:
    """The title of a conversation started by ``content``: its first words, on
    one line, cut at a word boundary with an ellipsis when too long."""
    words = content.split()
    title = " ".join(words)
    if len(title) <= max_chars:
        return title
    cut = title[: max_chars - 1]
    if " " in cut[max_chars // 2 :]:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip() + "…"
