"""An in-memory :class:`~sanic_chat.core.ports.MessageStore`: the reference semantics.

No method awaits anything between reading and writing its state, so on one
event loop every method is atomic -- the role a transaction plays in the SQL
store. The SQL store's contract tests run against this one too.

Ordering: messages of a conversation are ordered by ``(created_at, id)``, the
same key the SQL store sorts on; a reply row is created one microsecond after
its user message so that the pair always sorts user-first (``semantics.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING

from ..core.errors import Conflict, Interrupted, NotFound, Unavailable
from ..core.ports import MessageStore, Posted, new_conversation_id
from ..core.records import Conversation, ErrorInfo, Message, Status, Usage, title_from, utcnow
from .semantics import fill_context, oldest_first, posted_messages

__all__ = ["MemoryMessageStore"]


@dataclass(slots=True)
class _Row:
    """A streaming reply's store-only fields (not part of :class:`Message`)."""

    node_id: str | None = None
    lease_until: datetime | None = None


@dataclass(slots=True)
class _State:
    conversations: dict[str, Conversation] = field(default_factory=dict)
    messages: dict[str, Message] = field(default_factory=dict)
    #: conversation id -> message ids, in insertion order
    by_conversation: dict[str, list[str]] = field(default_factory=dict)
    #: (conversation id, client id) -> user message id: the idempotency key
    by_client_id: dict[tuple[str, str], str] = field(default_factory=dict)
    #: user message id -> its reply's id
    reply_of: dict[str, str] = field(default_factory=dict)
    #: reply id -> lease, for exactly the rows whose status is ``streaming``
    leases: dict[str, _Row] = field(default_factory=dict)


def _sort_key(message: Message) -> tuple[datetime, str]:
    return (message.created_at, message.id)


class MemoryMessageStore:
    """Everything in dicts; lost when the process ends."""

    def __init__(self) -> None:
        self._state = _State()
        self._closed = False

    # ------------------------------------------------------------------ helpers

    def _live(self) -> _State:
        # A closed store behaves like an unreachable database, as the SQL one does.
        if self._closed:
            raise Unavailable("the store is closed")
        return self._state

    def _own(self, owner: str, conversation_id: str) -> Conversation | None:
        conversation = self._live().conversations.get(conversation_id)
        if conversation is None or conversation.owner != owner:
            return None
        return conversation

    def _messages_of(self, conversation_id: str) -> list[Message]:
        state = self._live()
        ids = state.by_conversation.get(conversation_id, [])
        return sorted((state.messages[i] for i in ids), key=_sort_key)

    def _reply_to(self, user: Message) -> Message | None:
        state = self._live()
        reply_id = state.reply_of.get(user.id)
        return state.messages.get(reply_id) if reply_id is not None else None

    # ------------------------------------------------------------------ conversations

    async def create_conversation(
        self, owner: str, *, title: str | None = None, model: str | None = None
    ) -> Conversation:
        state = self._live()
        now = utcnow()
        conversation = Conversation(str(uuid.uuid4()), owner, title, model, now, now)
        state.conversations[conversation.id] = conversation
        state.by_conversation[conversation.id] = []
        return conversation

    async def get_conversation(self, owner: str, conversation_id: str) -> Conversation | None:
        return self._own(owner, conversation_id)

    async def list_conversations(
        self, owner: str, *, limit: int = 50, before: datetime | None = None
    ) -> list[Conversation]:
        mine = [
            c
            for c in self._live().conversations.values()
            if c.owner == owner and (before is None or c.updated_at < before)
        ]
        mine.sort(key=lambda c: (c.updated_at, c.id), reverse=True)
        return mine[: max(limit, 0)]

    async def delete_conversation(self, owner: str, conversation_id: str) -> bool:
        if self._own(owner, conversation_id) is None:
            return False
        state = self._state
        del state.conversations[conversation_id]
        for message_id in state.by_conversation.pop(conversation_id, []):
            message = state.messages.pop(message_id)
            state.leases.pop(message_id, None)
            state.reply_of.pop(message_id, None)
            if message.client_id is not None:
                state.by_client_id.pop((conversation_id, message.client_id), None)
        return True

    # ------------------------------------------------------------------ posting

    async def post_user_message(
        self,
        owner: str,
        *,
        conversation_id: str | None,
        client_id: str,
        content: str,
        model: str,
        node_id: str,
        lease_until: datetime,
        history_max_chars: int | None = None,
    ) -> Posted:
        state = self._live()
        now = utcnow()
        new_conversation: Conversation | None = None
        if conversation_id is None:
            conversation_id = new_conversation_id(owner, client_id)
            conversation = self._own(owner, conversation_id)
            if conversation is None:
                if conversation_id in state.conversations:  # a uuid5 collision: never in practice
                    raise NotFound("conversation not found")
                conversation = new_conversation = Conversation(
                    conversation_id, owner, title_from(content), model, now, now
                )
        else:
            found = self._own(owner, conversation_id)
            if found is None:
                raise NotFound("conversation not found")
            conversation = found

        # Idempotency is checked before Conflict: a retry whose own reply is still
        # streaming must get that reply back, not a refusal.
        existing_id = state.by_client_id.get((conversation_id, client_id))
        if existing_id is not None:
            user = state.messages[existing_id]
            return Posted(conversation, user, self._reply_to(user), created=False)

        if any(
            m.role == "assistant" and m.status == "streaming"
            for m in (state.messages[i] for i in state.by_conversation.get(conversation_id, []))
        ):
            raise Conflict("a reply is already running in this conversation")

        user, reply = posted_messages(
            conversation_id=conversation_id,
            user_id=str(uuid.uuid4()),
            reply_id=str(uuid.uuid4()),
            client_id=client_id,
            content=content,
            model=model,
            now=now,
        )
        if new_conversation is not None:
            state.conversations[conversation_id] = new_conversation
            state.by_conversation[conversation_id] = []
        conversation = replace(conversation, updated_at=now)
        state.conversations[conversation_id] = conversation
        for message in (user, reply):
            state.messages[message.id] = message
            state.by_conversation[conversation_id].append(message.id)
        state.by_client_id[(conversation_id, client_id)] = user.id
        state.reply_of[user.id] = reply.id
        state.leases[reply.id] = _Row(node_id, lease_until)
        history = None
        if history_max_chars is not None:
            history = await self.history(conversation_id, before=user, max_chars=history_max_chars)
        return Posted(conversation, user, reply, created=True, history=history)

    # ------------------------------------------------------------------ reading

    async def get_message(self, owner: str, message_id: str) -> Message | None:
        message = self._live().messages.get(message_id)
        if message is None or self._own(owner, message.conversation_id) is None:
            return None
        return message

    async def list_messages(
        self, owner: str, conversation_id: str, *, limit: int = 50, before: str | None = None
    ) -> list[Message] | None:
        if self._own(owner, conversation_id) is None:
            return None
        messages = self._messages_of(conversation_id)
        if before is not None:
            anchor = self._state.messages.get(before)
            if anchor is None or anchor.conversation_id != conversation_id:
                return []
            messages = [m for m in messages if _sort_key(m) < _sort_key(anchor)]
        return messages[-limit:] if limit > 0 else []

    async def history(
        self, conversation_id: str, *, before: Message, max_chars: int
    ) -> list[Message]:
        candidates = [
            m for m in self._messages_of(conversation_id) if _sort_key(m) <= _sort_key(before)
        ]
        kept: list[Message] = []
        fill_context(kept, 0, reversed(candidates), max_chars)
        return oldest_first(kept, before)

    # ------------------------------------------------------------------ replies

    async def checkpoint(self, message_id: str, content: str) -> None:
        state = self._live()
        message = state.messages.get(message_id)
        if message is not None and message.status == "streaming":
            state.messages[message_id] = replace(message, content=content)

    async def finish(
        self,
        message_id: str,
        *,
        content: str,
        status: Status,
        usage: Usage | None = None,
        finish_reason: str | None = None,
        error: ErrorInfo | None = None,
    ) -> Message:
        state = self._live()
        message = state.messages.get(message_id)
        if message is None:
            raise NotFound("message not found")
        if message.status != "streaming":
            return message
        if usage is not None and usage.input_tokens is None and usage.output_tokens is None:
            usage = None  # as the SQL store reads back two NULL columns
        message = replace(
            message,
            content=content,
            status=status,
            usage=usage,
            finish_reason=finish_reason,
            error=error,
            completed_at=utcnow(),
        )
        state.messages[message_id] = message
        state.leases.pop(message_id, None)
        return message

    async def renew_leases(self, node_id: str, message_ids: Sequence[str], until: datetime) -> None:
        state = self._live()
        for message_id in message_ids:
            lease = state.leases.get(message_id)
            if lease is not None and lease.node_id == node_id:
                lease.lease_until = until

    async def interrupt_orphans(
        self, *, now: datetime, node_id: str | None = None
    ) -> list[Message]:
        state = self._live()
        orphans: list[Message] = []
        for message_id, lease in list(state.leases.items()):
            if node_id is not None:
                orphaned = lease.node_id == node_id
            else:
                orphaned = lease.lease_until is None or lease.lease_until < now
            if not orphaned:
                continue
            message = replace(
                state.messages[message_id],
                status="interrupted",
                completed_at=utcnow(),
                error=ErrorInfo(Interrupted.code, Interrupted.default_message()),
            )
            state.messages[message_id] = message
            del state.leases[message_id]
            orphans.append(message)
        orphans.sort(key=_sort_key)
        return orphans

    # ------------------------------------------------------------------ lifecycle

    async def ping(self) -> None:
        self._live()

    async def close(self) -> None:
        self._closed = True


if TYPE_CHECKING:
    _conforms: type[MessageStore] = MemoryMessageStore  # mypy checks it against the port
