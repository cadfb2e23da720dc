"""The chat service: one per process. It posts messages, runs generations,
cancels them (here or, through the bus, on whichever node runs them), follows
them for resume, keeps their leases alive, and recovers orphans.

Sessions (one per connection, any transport) call into it; it never knows
which transport is on the other side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

from .errors import NotFound, Unavailable, ValidationFailed
from .events import (
    TERMINAL_TYPES,
    GenerationDelta,
    GenerationEvent,
    MessageAccepted,
    MessageCreate,
    ServerEvent,
)
from .generation import Generation, terminal_event_for
from .outbox import Outbox
from .ports import Bus, CompletionRequest, MessageStore, Models, Posted, Turn
from .records import Message, utcnow
from .settings import CoreSettings

log = logging.getLogger(__name__)

__all__ = ["ChatService", "ServiceHooks"]


@dataclass(slots=True)
class ServiceHooks:
    """Observers for metrics; every hook is optional and must not block."""

    first_chunk: Callable[[float], None] | None = None
    generation_finished: Callable[[str, float], None] | None = None  # status, seconds
    message_persisted: Callable[[float], None] | None = None  # seconds
    provider_error: Callable[[str], None] | None = None  # code
    extra: dict[str, object] = field(default_factory=dict)


class ChatService:
    def __init__(
        self,
        *,
        store: MessageStore,
        bus: Bus,
        models: Models,
        node_id: str,
        settings: CoreSettings | None = None,
        hooks: ServiceHooks | None = None,
    ) -> None:
        self.store = store
        self.bus = bus
        self.models = models
        self.node_id = node_id
        self.settings = settings or CoreSettings()
        self.hooks = hooks or ServiceHooks()
        #: generations running in this process, by id
        self.running: dict[str, Generation] = {}
        self._tasks: set[asyncio.Task[object]] = set()
        self._lease_task: asyncio.Task[None] | None = None
        self.accepting = True

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self.bus.on_cancel(self._on_cancel_request)
        await self.recover_orphans()
        self._lease_task = asyncio.create_task(self._keep_leases())

    async def recover_orphans(self) -> list[Message]:
        """Mark replies whose node stopped renewing their lease ``interrupted``
        and tell anyone following them."""
        try:
            orphans = await self.store.interrupt_orphans(now=utcnow())
        except Unavailable:
            return []
        for message in orphans:
            if message.id in self.running:
                continue
            with contextlib.suppress(Unavailable):
                await self.bus.publish(message.conversation_id, terminal_event_for(message))
        return orphans

    async def _keep_leases(self) -> None:
        lease = self.settings.lease_s
        while True:
            await asyncio.sleep(lease / 3)
            try:
                if self.running:
                    await self.store.renew_leases(
                        self.node_id, list(self.running), utcnow() + timedelta(seconds=lease)
                    )
                await self.recover_orphans()
            except Exception as exc:
                log.warning("lease upkeep failed: %s", exc)

    async def drain(self, timeout_s: float) -> None:
        """Stop taking messages, let running replies finish for up to
        ``timeout_s``, then stop the rest (stored ``interrupted`` with their text)."""
        self.accepting = False
        pending = [g.done.wait() for g in self.running.values()]
        if pending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*pending), timeout_s)
        for generation in list(self.running.values()):
            generation.cancel("interrupted")
        remaining = [g.done.wait() for g in self.running.values()]
        if remaining:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*remaining), 10.0)

    async def close(self) -> None:
        if self._lease_task is not None:
            self._lease_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lease_task
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

    # ------------------------------------------------------------------ messages

    async def post(self, owner: str, frame: MessageCreate) -> tuple[Posted, MessageAccepted]:
        """Store the user message (committed before this returns), start its
        reply if it is new, and announce both to the conversation."""
        if not self.accepting:
            raise Unavailable("the server is shutting down; retry with the same client_id")
        model = frame.model or self.models.default
        provider = self.models.get(model)  # ValidationFailed for an unknown model
        started = time.monotonic()
        posted = await self.store.post_user_message(
            owner,
            conversation_id=frame.conversation_id,
            client_id=frame.client_id,
            content=frame.content,
            model=model,
            node_id=self.node_id,
            lease_until=utcnow() + timedelta(seconds=self.settings.lease_s),
        )
        if self.hooks.message_persisted is not None:
            self.hooks.message_persisted(time.monotonic() - started)
        accepted = MessageAccepted(
            frame.client_id,
            posted.conversation.id,
            posted.user,
            posted.reply.id if posted.reply is not None else None,
        )
        if not posted.created:
            return posted, accepted
        assert posted.reply is not None
        await self.bus.publish(posted.conversation.id, accepted)
        history = await self.store.history(
            posted.conversation.id, before=posted.user, max_chars=self.settings.history_max_chars
        )
        turns = [Turn(m.role, m.content) for m in history]
        if self.settings.system_prompt:
            turns.insert(0, Turn("system", self.settings.system_prompt))
        generation = Generation(
            reply=posted.reply,
            provider=provider,
            request=CompletionRequest(turns),
            store=self.store,
            bus=self.bus,
            checkpoint_interval_s=self.settings.checkpoint_interval_s,
            finish_retry_s=self.settings.finish_retry_s,
            on_first_chunk=self.hooks.first_chunk,
        )
        self.running[generation.id] = generation
        self.spawn(self._run(generation))
        return posted, accepted

    async def _run(self, generation: Generation) -> None:
        try:
            terminal = await generation.run()
            if self.hooks.generation_finished is not None:
                self.hooks.generation_finished(
                    terminal.message.status, time.monotonic() - generation.started_at
                )
            error = getattr(terminal, "error", None)
            if error is not None and self.hooks.provider_error is not None:
                self.hooks.provider_error(error.code)
        finally:
            self.running.pop(generation.id, None)

    # ------------------------------------------------------------------ cancel

    async def cancel(self, owner: str, generation_id: str) -> Message:
        """Stop a running reply wherever it runs. Cancelling a reply that has
        already ended is not an error: it answers with the stored message."""
        message = await self.store.get_message(owner, generation_id)
        if message is None or message.role != "assistant":
            raise NotFound("no such generation", ref=generation_id)
        if message.is_final:
            return message
        if not self._cancel_local(generation_id):
            await self.bus.request_cancel(generation_id)
        return message

    def _on_cancel_request(self, generation_id: str) -> None:
        self._cancel_local(generation_id)

    def _cancel_local(self, generation_id: str) -> bool:
        generation = self.running.get(generation_id)
        if generation is None:
            return False
        generation.cancel("cancelled")
        return True

    async def cancel_conversation(self, owner: str, conversation_id: str) -> None:
        """Cancel every running reply of a conversation (before it is deleted)."""
        for generation in list(self.running.values()):
            if generation.conversation_id == conversation_id:
                generation.cancel("cancelled")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(generation.done.wait(), 5.0)

    # ------------------------------------------------------------------ following

    async def follow(
        self, owner: str, generation_id: str, offset: int, outbox: Outbox
    ) -> Callable[[], Awaitable[None]] | None:
        """Deliver a generation into ``outbox`` from ``offset``: what exists so
        far as one delta, then live deltas, then its terminal event. Returns an
        unsubscribe for the live part (None when it was already finished).

        The live subscription is opened BEFORE the snapshot is read and its
        events are held back until the snapshot is queued, so nothing published
        in between is lost; the outbox drops whatever overlaps by offset.
        """
        message = await self.store.get_message(owner, generation_id)
        if message is None or message.role != "assistant":
            raise NotFound("no such generation", ref=generation_id)
        if message.is_final:
            self._replay_final(message, offset, outbox)
            return None

        held: list[GenerationEvent] | None = []
        finished = False
        unsubscribe: Callable[[], Awaitable[None]] | None = None

        def listener(event: ServerEvent) -> None:
            nonlocal finished
            if getattr(event, "generation_id", None) != generation_id or isinstance(
                event, MessageAccepted
            ):
                return
            if isinstance(event, TERMINAL_TYPES):
                finished = True
            if held is not None:
                held.append(event)  # type: ignore[arg-type]
                return
            outbox.push(event)
            if finished and unsubscribe is not None:
                # the live part ends with the terminal event
                self.spawn(unsubscribe())

        unsubscribe = await self.bus.subscribe(message.conversation_id, listener)
        try:
            tail = await self.bus.tail(generation_id)
            if tail is None:
                # no live tail: either it ended and the tail expired (the row is
                # final now), or its process died (orphan recovery will end it)
                message = await self.store.get_message(owner, generation_id) or message
                if message.is_final:
                    self._replay_final(message, offset, outbox)
                    held = None
                    await unsubscribe()
                    return None
                _check_offset(offset, len(message.content), generation_id)
                outbox.expect(generation_id, offset)
                if len(message.content) > offset:
                    outbox.push(GenerationDelta(generation_id, offset, message.content[offset:]))
            else:
                _check_offset(offset, len(tail.text), generation_id)
                outbox.expect(generation_id, offset)
                outbox.push(tail.started)
                if len(tail.text) > offset:
                    outbox.push(GenerationDelta(generation_id, offset, tail.text[offset:]))
                if tail.terminal is not None:
                    outbox.push(tail.terminal)
                    finished = True
            for event in held or ():
                outbox.push(event)
            held = None
        except BaseException:
            await unsubscribe()
            raise
        if finished:
            await unsubscribe()
            return None
        return unsubscribe

    @staticmethod
    def _replay_final(message: Message, offset: int, outbox: Outbox) -> None:
        _check_offset(offset, len(message.content), message.id)
        outbox.expect(message.id, offset)
        if len(message.content) > offset:
            outbox.push(GenerationDelta(message.id, offset, message.content[offset:]))
        outbox.push(terminal_event_for(message))


def _check_offset(offset: int, length: int, generation_id: str) -> None:
    if offset > length:
        raise ValidationFailed(
            f"offset {offset} is past the {length} code points of this reply", ref=generation_id
        )
