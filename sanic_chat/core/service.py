"""The chat service: one per process, a thin facade over the core's jobs.

* :class:`~.posting.Posting` -- posting (the user message stored, its reply
  started and tracked, the per-user cap) and stopping replies;
* :class:`~.following.Following` -- resume and catch-up, planned by the pure
  functions of :mod:`.replay`;
* :class:`~.leases.Leases` -- leases of the replies running here, orphan
  recovery, the watch on the database;
* :func:`~.drain.drain` -- shutdown.

Callers outside the core hold it only through their door (:mod:`.doors`):
transports :class:`~.doors.ChatOperations` (sessions, one per connection, any
transport -- it never knows which), REST :class:`~.doors.ConversationDirectory`,
operations :class:`~.doors.Readiness`. The store and the bus it is built with
belong to the composition root, which closes them after :meth:`close`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime

from .drain import drain
from .errors import failure_cause
from .events import MessageAccepted, MessageCreate
from .following import Following
from .generation import Generation
from .leases import Leases
from .load import linger_s
from .ports import Bus, EventListener, MessageStore, Models, Posted
from .posting import Posting, ServiceHooks
from .records import Conversation, Message
from .session import ChatSession, FrameGate
from .settings import CoreSettings

__all__ = ["ChatService", "ServiceHooks"]

#: a readiness probe answers within this long, reachable or not
_PROBE_TIMEOUT_S = 2.0


class ChatService:
    """Implements :class:`~.doors.ChatOperations`, :class:`~.doors.ConversationDirectory`
    and :class:`~.doors.Readiness`."""

    def __init__(
        self,
        *,
        store: MessageStore,
        bus: Bus,
        models: Models,
        node_id: str,
        settings: CoreSettings | None = None,
        hooks: ServiceHooks | None = None,
        sole_process: bool = False,
        max_running_replies_per_user: int | None = None,
    ) -> None:
        self.store = store
        self.bus = bus
        self.models = models
        self.node_id = node_id
        self.settings = settings or CoreSettings()
        self.hooks = hooks or ServiceHooks()
        self._tasks: set[asyncio.Task[object]] = set()
        self.posting = Posting(
            store=store,
            bus=bus,
            models=models,
            node_id=node_id,
            settings=self.settings,
            hooks=self.hooks,
            max_running_replies_per_user=max_running_replies_per_user,
            spawn=self.spawn,
        )
        self.following = Following(store=store, bus=bus, spawn=self.spawn)
        self.leases = Leases(
            store=store,
            bus=bus,
            node_id=node_id,
            lease_s=self.settings.lease_s,
            running=self.posting.running,
            sole_process=sole_process,
        )

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self.bus.on_cancel(self._on_cancel_request)
        await self.leases.recover_at_start()
        self.leases.start()

    def _on_cancel_request(self, generation_id: str) -> None:
        """A Stop relayed by the bus: the reply may run here (or elsewhere)."""
        self.posting.cancel_local(generation_id)

    async def recover_orphans(
        self, *, now: datetime | None = None, node_id: str | None = None
    ) -> list[Message]:
        return await self.leases.recover_orphans(now=now, node_id=node_id)

    async def drain(self, timeout_s: float) -> None:
        """Stop taking messages, let running replies finish for up to
        ``timeout_s``, then stop the rest (see :func:`~.drain.drain`)."""
        self.posting.accepting = False
        await drain(self.posting.running, self.bus, timeout_s)

    async def close(self) -> None:
        """Stop what the core runs: the lease loop, the replies still running
        (stored ``interrupted``) and its tasks. The store and the bus stay open
        (their builder closes them)."""
        await self.leases.stop()
        for generation in list(self.running.values()):
            generation.cancel("interrupted")
        tasks = list(self._tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=10.0)

    def spawn(self, coro: Awaitable[object]) -> asyncio.Task[object]:
        task: asyncio.Task[object] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def running(self) -> dict[str, Generation]:
        """Generations running in this process, by id."""
        return self.posting.running

    # ------------------------------------------------------------------ ChatOperations

    def open_session(self, user: str, *, gate: FrameGate | None = None) -> ChatSession:
        return ChatSession(self, user, gate=gate)

    def linger_s(self) -> float:
        settings = self.settings
        return linger_s(
            len(self.posting.running),
            coalesce_s=settings.coalesce_s,
            coalesce_above=settings.coalesce_above,
        )

    # what sessions call (core only)

    async def post(self, owner: str, frame: MessageCreate) -> tuple[Posted, MessageAccepted]:
        return await self.posting.post(owner, frame)

    async def cancel(self, owner: str, generation_id: str) -> Message:
        return await self.posting.cancel(owner, generation_id)

    async def subscribe(
        self, conversation_id: str, listener: EventListener
    ) -> Callable[[], Awaitable[None]]:
        """Listen to a conversation's events from now on; returns an unsubscribe."""
        return await self.bus.subscribe(conversation_id, listener)

    # ------------------------------------------------------------------ ConversationDirectory

    async def create_conversation(
        self, owner: str, *, title: str | None, model: str | None
    ) -> Conversation:
        if model is not None:
            self.models.get(model)  # ValidationFailed for an unknown model
        return await self.store.create_conversation(owner, title=title, model=model)

    async def list_conversations(
        self, owner: str, *, limit: int, before: datetime | None
    ) -> list[Conversation]:
        return await self.store.list_conversations(owner, limit=limit, before=before)

    async def get_conversation(self, owner: str, conversation_id: str) -> Conversation | None:
        return await self.store.get_conversation(owner, conversation_id)

    async def delete_conversation(self, owner: str, conversation_id: str) -> bool:
        if await self.store.get_conversation(owner, conversation_id) is None:
            return False  # never stop another user's replies
        await self.posting.cancel_conversation(conversation_id)
        return await self.store.delete_conversation(owner, conversation_id)

    async def list_messages(
        self, owner: str, conversation_id: str, *, limit: int, before: str | None
    ) -> list[Message] | None:
        return await self.store.list_messages(owner, conversation_id, limit=limit, before=before)

    # ------------------------------------------------------------------ Readiness

    @property
    def accepting(self) -> bool:
        return self.posting.accepting

    @property
    def running_count(self) -> int:
        return len(self.posting.running)

    @property
    def default_model(self) -> str:
        return self.models.default

    @property
    def max_content_chars(self) -> int:
        return self.settings.max_content_chars

    async def probe(self) -> dict[str, str]:
        database, bus = await asyncio.gather(_check(self.store.ping), _check(self.bus.ping))
        # draining: a load balancer stops sending new clients here, while the
        # replies still running finish on the connections they have
        server = "ok" if self.posting.accepting else "draining"
        return {"database": database, "bus": bus, "server": server}


async def _check(ping: Callable[[], Awaitable[None]]) -> str:
    try:
        await asyncio.wait_for(ping(), _PROBE_TIMEOUT_S)
    except Exception as exc:
        # the cause an operator can act on ("connection refused (10.0.0.5:5432)"), never
        # a password; TimeoutError: no answer within the probe's time
        return f"unreachable: {failure_cause(exc)}"
    return "ok"
