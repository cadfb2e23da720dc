"""What one message's server frames say, measured: no I/O, any transport.

A :class:`ReplyTracker` is fed the decoded JSON events that arrive after a
``message.create`` (WebSocket) or a ``POST .../messages`` (SSE) and turns them
into the numbers the load generator reports: when the message was acknowledged
(committed), when the first text arrived, when the terminal event arrived, and
whether the text arrived exactly once. Offsets count code points (``len(str)``),
as the protocol says, so a gap is text the client never got and an overlap is
text it got twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["TERMINAL", "MessageResult", "ReplyTracker", "message_create"]

TERMINAL = frozenset({"generation.completed", "generation.cancelled", "generation.failed"})


def message_create(
    client_id: str, content: str, conversation_id: str | None, model: str | None
) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "message.create", "client_id": client_id, "content": content}
    if conversation_id is not None:
        frame["conversation_id"] = conversation_id
    if model is not None:
        frame["model"] = model
    return frame


@dataclass(slots=True)
class MessageResult:
    """One message, as the report needs it. Times are milliseconds after the
    send, or None when that point was never reached."""

    user: int
    transport: str
    slow: bool
    sent_at: float  # seconds since the run started
    accepted_ms: float | None
    first_ms: float | None
    done_ms: float | None
    outcome: str  # completed | cancelled | failed | error | timeout | dropped
    error: str | None
    chars: int
    deltas: int
    gaps: int
    lost_chars: int
    overlaps: int
    duplicated_chars: int
    mismatch: bool  # the terminal message's content differs from the text received
    resumes: int
    conversation_id: str | None
    message_id: str | None
    generation_id: str | None

    def as_row(self) -> list[Any]:
        return [getattr(self, name) for name in self.__slots__]  # type: ignore[attr-defined]

    @classmethod
    def fields(cls) -> list[str]:
        return list(cls.__slots__)  # type: ignore[attr-defined]


class ReplyTracker:
    """Follows one message from send to terminal event.

    ``feed`` takes one event and the time it arrived (``time.perf_counter()``)
    and returns True once the message is over (terminal event, or an ``error``
    frame about it). Events of other generations -- earlier replies replayed,
    another tab's -- are ignored.
    """

    __slots__ = (
        "accepted_at",
        "client_id",
        "conversation_id",
        "deltas",
        "done_at",
        "duplicated_chars",
        "error",
        "first_at",
        "gaps",
        "generation_id",
        "length",
        "lost_chars",
        "message_id",
        "mismatch",
        "outcome",
        "overlaps",
        "parts",
        "resumes",
        "sent_at",
        "stale",
    )

    def __init__(self, client_id: str, sent_at: float, stale: set[str] | None = None) -> None:
        self.client_id = client_id
        self.sent_at = sent_at
        #: generation ids that belong to earlier messages of this user
        self.stale = stale if stale is not None else set()
        self.accepted_at: float | None = None
        self.first_at: float | None = None
        self.done_at: float | None = None
        self.conversation_id: str | None = None
        self.message_id: str | None = None
        self.generation_id: str | None = None
        self.parts: list[str] = []
        self.length = 0
        self.deltas = 0
        self.gaps = 0
        self.lost_chars = 0
        self.overlaps = 0
        self.duplicated_chars = 0
        self.mismatch = False
        self.outcome = "timeout"
        self.error: str | None = None
        self.resumes = 0

    # ------------------------------------------------------------------ input

    def accepted(self, message: dict[str, Any], generation_id: str | None, now: float) -> None:
        """The message is committed (``message.accepted``, or the SSE POST's 202)."""
        if self.accepted_at is None:
            self.accepted_at = now
        self.message_id = message.get("id")
        self.conversation_id = message.get("conversation_id") or self.conversation_id
        if generation_id and self.generation_id is None:
            self.generation_id = generation_id

    def _mine(self, generation_id: str | None) -> bool:
        if generation_id is None or generation_id in self.stale:
            return False
        if self.generation_id is None:
            # the protocol's accepted frame need not name the reply; the first
            # new generation of this conversation after our message is ours
            self.generation_id = generation_id
        return generation_id == self.generation_id

    def feed(self, event: dict[str, Any], now: float) -> bool:
        kind = event.get("type")
        if kind == "generation.delta":
            if self._mine(event.get("generation_id")):
                self._delta(event["offset"], event["text"], now)
            return False
        if kind == "message.accepted":
            if event.get("client_id") == self.client_id:
                self.accepted(event.get("message") or {}, event.get("generation_id"), now)
            return False
        if kind == "generation.started":
            if self.message_id is not None and event.get("reply_to") not in (None, self.message_id):
                return False
            self._mine(event.get("generation_id"))
            return False
        if kind in TERMINAL:
            if not self._mine(event.get("generation_id")):
                return False
            self._terminal(kind, event, now)
            return True
        if kind == "error":
            ref = event.get("ref")
            if ref is None or ref in (self.client_id, self.generation_id):
                self.done_at = now
                self.outcome = "error"
                self.error = str(event.get("code"))
                return True
        return False

    def _delta(self, offset: int, text: str, now: float) -> None:
        if not text:
            return
        self.deltas += 1
        if self.first_at is None:
            self.first_at = now
        length = self.length
        if offset > length:
            self.gaps += 1
            self.lost_chars += offset - length
            self.parts.append("\x00" * (offset - length))  # keeps the comparison honest
        elif offset < length:
            self.overlaps += 1
            repeated = min(length, offset + len(text)) - offset
            self.duplicated_chars += repeated
            text = text[repeated:]
            offset += repeated
            if not text:
                return
        self.parts.append(text)
        self.length = offset + len(text)

    def _terminal(self, kind: str, event: dict[str, Any], now: float) -> None:
        self.done_at = now
        self.outcome = kind.rpartition(".")[2]
        message = event.get("message") or {}
        content = message.get("content")
        if isinstance(content, str):
            received = "".join(self.parts)
            self.mismatch = content != received
        if kind == "generation.failed":
            self.error = str((event.get("error") or {}).get("code"))

    # ------------------------------------------------------------------ output

    def text(self) -> str:
        return "".join(self.parts)

    def last_event_id(self) -> str | None:
        """Where an event stream reopened after a drop resumes (None: from now)."""
        if self.generation_id is None:
            return None
        return f"{self.generation_id}:{self.length}"

    def resume_frame(self, create: str) -> str:
        """What a WebSocket reconnected after a drop sends: ``generation.resume``
        from the text held, or, before the reply is known, the same
        ``message.create`` again (idempotent on its client_id)."""
        if self.generation_id is None:
            return create
        resume = {
            "type": "generation.resume",
            "generation_id": self.generation_id,
            "offset": self.length,
        }
        return orjson.dumps(resume).decode()

    def result(self, *, user: int, transport: str, slow: bool, run_start: float) -> MessageResult:
        def ms(at: float | None) -> float | None:
            return None if at is None else round((at - self.sent_at) * 1000.0, 3)

        return MessageResult(
            user=user,
            transport=transport,
            slow=slow,
            sent_at=round(self.sent_at - run_start, 3),
            accepted_ms=ms(self.accepted_at),
            first_ms=ms(self.first_at),
            done_ms=ms(self.done_at),
            outcome=self.outcome,
            error=self.error,
            chars=self.length,
            deltas=self.deltas,
            gaps=self.gaps,
            lost_chars=self.lost_chars,
            overlaps=self.overlaps,
            duplicated_chars=self.duplicated_chars,
            mismatch=self.mismatch,
            resumes=self.resumes,
            conversation_id=self.conversation_id,
            message_id=self.message_id,
            generation_id=self.generation_id,
        )
