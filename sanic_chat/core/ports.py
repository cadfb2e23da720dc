"""The ports: what the core needs from the outside world, as Protocols.

Each port has an in-memory implementation (``sanic_chat/core/memory.py`` for
the store, ``sanic_chat/bus/memory.py`` for the bus, the demo provider) and a
real one (peewee-async store, Redis bus, httpx providers). The core cannot
tell them apart.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from .events import GenerationStarted, ServerEvent, TerminalEvent
from .records import Conversation, ErrorInfo, Message, Status, Usage

__all__ = [
    "Bus",
    "CancelListener",
    "Chunk",
    "CompletionRequest",
    "EventListener",
    "MessageStore",
    "Models",
    "Posted",
    "Provider",
    "Tail",
    "Turn",
]

# --------------------------------------------------------------------------- provider


@dataclass(frozen=True, slots=True)
class Turn:
    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    """What a provider is asked for. ``messages`` are in order, oldest first, the
    last one the user's new message; the provider maps roles to its vendor."""

    messages: Sequence[Turn]
    max_tokens: int | None = None
    temperature: float | None = None


@dataclass(frozen=True, slots=True)
class Chunk:
    """One piece of an upstream stream. ``text`` may be empty on the last chunk,
    which carries ``usage`` and/or ``finish_reason``."""

    text: str = ""
    usage: Usage | None = None
    finish_reason: str | None = None


class Provider(Protocol):
    """One configured model. ``stream`` raises only :class:`ProviderError`
    subclasses; closing the iterator (``aclose``, or cancelling the task that
    iterates it) closes the upstream response at once."""

    name: str  # the model's name in the models file
    provider: str  # "openai" | "anthropic" | "ollama" | "demo"

    def stream(self, request: CompletionRequest) -> AsyncIterator[Chunk]: ...

    async def aclose(self) -> None: ...


# --------------------------------------------------------------------------- store


@dataclass(frozen=True, slots=True)
class Posted:
    """The result of posting a user message.

    ``created`` is False when the ``client_id`` was seen before: then ``user`` is
    the message stored the first time and ``reply`` its assistant reply (if
    any), and nothing new was started. ``history`` is the new message's context,
    as :meth:`MessageStore.history` returns it, when the post asked for it
    (``history_max_chars``) and ``created`` is True; otherwise None.
    """

    conversation: Conversation
    user: Message
    reply: Message | None
    created: bool
    history: list[Message] | None = None


class MessageStore(Protocol):
    """Owns all persistence. Every method that takes ``owner`` answers a foreign
    or missing id the same way (``None`` / :class:`NotFound`). Any failure to
    reach the database raises :class:`Unavailable`."""

    async def create_conversation(
        self, owner: str, *, title: str | None = None, model: str | None = None
    ) -> Conversation: ...

    async def get_conversation(self, owner: str, conversation_id: str) -> Conversation | None: ...

    async def list_conversations(
        self, owner: str, *, limit: int = 50, before: datetime | None = None
    ) -> list[Conversation]:
        """Newest first (by ``updated_at``), those updated strictly before ``before``."""
        ...

    async def delete_conversation(self, owner: str, conversation_id: str) -> bool: ...

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
        """Atomically: insert the user message (idempotent on conversation +
        client_id) AND its assistant reply row (status ``streaming``, empty
        content, leased to ``node_id`` until ``lease_until``), then commit.
        With ``history_max_chars``, a created post also reads the new message's
        :meth:`history` (after the commit, in the same call).

        With ``conversation_id`` None a new conversation is created whose id is
        derived from (owner, client_id) (:func:`new_conversation_id`), so a retry
        finds the first attempt. Raises :class:`NotFound` for a missing/foreign
        conversation and :class:`Conflict` (storing nothing) when another reply
        is already ``streaming`` in the conversation.
        """
        ...

    async def get_message(self, owner: str, message_id: str) -> Message | None: ...

    async def list_messages(
        self, owner: str, conversation_id: str, *, limit: int = 50, before: str | None = None
    ) -> list[Message] | None:
        """A page of messages, oldest first within the page: the ``limit`` newest
        messages created before the message ``before`` (a message id). ``None``
        if the conversation is missing or foreign."""
        ...

    async def history(
        self, conversation_id: str, *, before: Message, max_chars: int
    ) -> list[Message]:
        """The conversation's messages up to and including ``before`` (the new
        user message), oldest first, skipping empty assistant rows, keeping the
        newest ones whose content fits in ``max_chars`` (always at least
        ``before`` itself)."""
        ...

    async def checkpoint(self, message_id: str, content: str) -> None:
        """Write the partial content of a ``streaming`` message (no-op otherwise)."""
        ...

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
        """Finalize a reply row (only if still ``streaming``) and return it as
        stored. If it was already final, return it unchanged."""
        ...

    async def renew_leases(
        self, node_id: str, message_ids: Sequence[str], until: datetime
    ) -> None: ...

    async def interrupt_orphans(
        self, *, now: datetime, node_id: str | None = None
    ) -> list[Message]:
        """Mark ``streaming`` rows whose lease expired before ``now`` (or, with
        ``node_id``, every streaming row of that node) ``interrupted``, keeping
        their content; return them."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


def new_conversation_id(owner: str, client_id: str) -> str:
    """The id of the conversation a first ``message.create`` creates: derived,
    so that resending the same client_id finds the same conversation."""
    return str(uuid.uuid5(_CONVERSATION_NAMESPACE, f"{owner}\x00{client_id}"))


_CONVERSATION_NAMESPACE = uuid.UUID("6f0c7a52-7d0e-4f0a-9a47-3b0bb2f3c1de")

# --------------------------------------------------------------------------- bus

EventListener = Callable[[ServerEvent], None]
CancelListener = Callable[[str], None]


@dataclass(slots=True)
class Tail:
    """A snapshot of one generation's live tail: the text so far (from offset 0)
    and, once it ended, its terminal event."""

    started: GenerationStarted
    text: str
    terminal: TerminalEvent | None = None
    conversation_id: str = field(default="")


class Bus(Protocol):
    """Carries generation events between processes.

    ``publish`` of a generation event also appends it to that generation's tail
    (started opens it, deltas extend it, the terminal event closes it and
    starts its expiry). Events of one conversation reach every listener in
    publish order. Listeners are plain callables run on the event loop; they
    must not block.
    """

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None: ...

    async def publish(self, conversation_id: str, event: ServerEvent) -> None: ...

    async def subscribe(
        self, conversation_id: str, listener: EventListener
    ) -> Callable[[], Awaitable[None]]:
        """Listen to a conversation's events from now on; returns an unsubscribe.
        When it returns, every event published afterwards reaches ``listener``."""
        ...

    async def tail(self, generation_id: str) -> Tail | None:
        """The generation's tail, or None if it is unknown here or expired."""
        ...

    async def request_cancel(self, generation_id: str) -> None:
        """Ask whichever process runs ``generation_id`` to stop it."""
        ...

    async def on_cancel(self, listener: CancelListener) -> None:
        """Register this process's handler of cancel requests."""
        ...


# --------------------------------------------------------------------------- models


class Models(Protocol):
    """The configured models, by name (the providers' catalog)."""

    @property
    def default(self) -> str: ...

    def get(self, name: str) -> Provider:
        """The provider of model ``name``; raises :class:`ValidationFailed` if unknown."""
        ...
