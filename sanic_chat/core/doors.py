"""The core's doors: one narrow protocol per kind of caller (docs/architecture.md,
rule 2). A caller holds the core only through its door, so it cannot reach the
store, the bus or another caller's operations; :class:`~.service.ChatService`
implements all three.

* :class:`ChatOperations` -- transports (WebSocket, SSE): a session per
  connection (or per HTTP request) that validates, gates and runs frames:
  post, cancel, subscribe, resume (:class:`~.session.ChatSession`); and how
  long a writer may let text gather under load.
* :class:`ConversationDirectory` -- REST: conversations and their messages.
* :class:`Readiness` -- ``/readyz``, ``/metrics`` and the models list: the
  probe of what the core depends on, the running count, the limits.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from .records import Conversation, Message

if TYPE_CHECKING:
    from .session import ChatSession, FrameGate

__all__ = ["ChatOperations", "ConversationDirectory", "Readiness"]


class ChatOperations(Protocol):
    def open_session(self, user: str, *, gate: FrameGate | None = None) -> ChatSession:
        """A session for ``user``: it decodes (validates) each frame once, runs
        ``gate`` once before it, and queues what the connection is sent in its
        outbox. Close it when the connection ends (its replies run on)."""
        ...

    def linger_s(self) -> float:
        """How long a writer may let flowing text gather before it sends (0: not
        at all), for the load this process has now (see core.load)."""
        ...


class ConversationDirectory(Protocol):
    """A user's conversations; every operation is scoped to ``owner`` (another
    user's conversation is as absent as a missing one)."""

    async def create_conversation(
        self, owner: str, *, title: str | None, model: str | None
    ) -> Conversation:
        """An empty conversation; raises ValidationFailed for an unknown model."""
        ...

    async def list_conversations(
        self, owner: str, *, limit: int, before: datetime | None
    ) -> list[Conversation]:
        """Newest first, updated before ``before``."""
        ...

    async def get_conversation(self, owner: str, conversation_id: str) -> Conversation | None: ...

    async def delete_conversation(self, owner: str, conversation_id: str) -> bool:
        """Stop its running replies, then delete it with its messages; False if
        there was no such conversation."""
        ...

    async def list_messages(
        self, owner: str, conversation_id: str, *, limit: int, before: str | None
    ) -> list[Message] | None:
        """A page ending before message ``before``, oldest first; None if there
        is no such conversation."""
        ...


class Readiness(Protocol):
    @property
    def accepting(self) -> bool:
        """False once the process is draining (shutting down)."""
        ...

    @property
    def running_count(self) -> int:
        """Replies running in this process."""
        ...

    @property
    def default_model(self) -> str: ...

    @property
    def max_content_chars(self) -> int:
        """The longest message content accepted (code points)."""
        ...

    async def probe(self) -> dict[str, str]:
        """``database``, ``bus`` and ``server``: each ``"ok"`` or why not
        (``"unreachable: <cause>"``, ``"draining"``); answers within a bounded
        time whether or not they are reachable."""
        ...
