"""What every store does the same way: the records a post makes, and a reply's context.

Shared by the in-memory store (the reference) and the SQL store, so the two
cannot drift apart on what the contract tests do not see at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from ..core.records import Message

__all__ = ["REPLY_AFTER", "fill_context", "oldest_first", "posted_messages"]

#: a reply sorts right after its user message (messages sort on (created_at, id);
#: the same moment would tie)
REPLY_AFTER = timedelta(microseconds=1)


def posted_messages(
    *,
    conversation_id: str,
    user_id: str,
    reply_id: str,
    client_id: str,
    content: str,
    model: str,
    now: datetime,
) -> tuple[Message, Message]:
    """The user message a post stores at ``now``, and its reply, just started."""
    user = Message(
        id=user_id,
        conversation_id=conversation_id,
        role="user",
        content=content,
        status="complete",
        model=model,
        created_at=now,
        completed_at=now,
        client_id=client_id,
    )
    reply = Message(
        id=reply_id,
        conversation_id=conversation_id,
        role="assistant",
        content="",
        status="streaming",
        model=model,
        created_at=now + REPLY_AFTER,
        reply_to=user_id,
    )
    return user, reply


def fill_context(
    kept: list[Message], used: int, newest_first: Iterable[Message], max_chars: int
) -> tuple[int, bool]:
    """Add messages to a context being built newest first, while they fit in
    ``max_chars`` (the first is always kept; empty replies are skipped); stop
    at the first that does not fit, so the context is a contiguous suffix of
    the conversation. Returns the characters used and whether one did not fit."""
    for message in newest_first:
        if message.role == "assistant" and not message.content:
            continue
        if kept and used + len(message.content) > max_chars:
            return used, True
        kept.append(message)
        used += len(message.content)
    return used, False


def oldest_first(kept: list[Message], before: Message) -> list[Message]:
    """The context :func:`fill_context` built, oldest first. ``before`` (the
    message the context is for) when none was found: it is always the context."""
    if not kept:
        kept = [before]
    kept.reverse()
    return kept
