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
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from .errors import NotFound, RateLimited, Unavailable, ValidationFailed, failure_cause
from .events import (
    GENERATION_TYPES,
    TERMINAL_TYPES,
    GenerationDelta,
    GenerationEvent,
    GenerationStarted,
    MessageAccepted,
    MessageCreate,
    ServerEvent,
)
from .generation import Generation, terminal_event_for
from .outbox import HeldListener, Outbox
from .ports import Bus, CompletionRequest, MessageStore, Models, Posted, Provider, Turn
from .records import Message, utcnow
from .settings import CoreSettings

log = logging.getLogger(__name__)

__all__ = ["ChatService", "ServiceHooks"]

#: added to "now" so that every lease counts as lapsed (start-up of a sole process)
_EVERY_LEASE_LAPSED = timedelta(days=36_500)


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
        sole_process: bool = False,
        max_running_replies_per_user: int | None = None,
    ) -> None:
        self.store = store
        self.bus = bus
        self.models = models
        self.node_id = node_id
        self.settings = settings or CoreSettings()
        self.hooks = hooks or ServiceHooks()
        #: True when no other process can be running replies on this store
        #: (the embedded default: SQLite and the in-memory bus). Then every
        #: ``streaming`` row found at start-up is an orphan of a dead process.
        self.sole_process = sole_process
        #: replies one user may have running in this process at once (None: no limit)
        self.max_running_replies_per_user = max_running_replies_per_user
        self._owner_of: dict[str, str] = {}  # running generation id -> owner
        self._replies_of: dict[str, int] = {}  # owner -> running + being posted
        #: generations running in this process, by id
        self.running: dict[str, Generation] = {}
        self._tasks: set[asyncio.Task[object]] = set()
        self._lease_task: asyncio.Task[None] | None = None
        self.accepting = True

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self.bus.on_cancel(self._on_cancel_request)
        await self.recover_at_start()
        self._lease_task = asyncio.create_task(self._keep_leases())

    async def recover_at_start(self) -> list[Message]:
        """End the replies a previous process left ``streaming``, as soon as it
        is safe to: nothing runs in this process yet, so

        * as the sole process, every ``streaming`` row is an orphan, whoever's
          lease it still holds (a restart is quicker than the lease);
        * otherwise rows of this node id (a restart with a stable
          ``node_id``) are orphans, and others only once their lease lapsed --
          a live node on the shared bus may still be streaming them.
        """
        if self.sole_process:
            return await self.recover_orphans(now=utcnow() + _EVERY_LEASE_LAPSED)
        mine = await self.recover_orphans(node_id=self.node_id)
        return mine + await self.recover_orphans()

    async def recover_orphans(
        self, *, now: datetime | None = None, node_id: str | None = None
    ) -> list[Message]:
        """Mark replies whose node stopped renewing their lease before ``now``
        (or, with ``node_id``, every reply of that node) ``interrupted``,
        keeping their checkpointed text, and tell anyone following them."""
        try:
            orphans = await self.store.interrupt_orphans(now=now or utcnow(), node_id=node_id)
        except Unavailable:
            return []
        for message in orphans:
            if message.id in self.running:
                continue
            with contextlib.suppress(Unavailable):
                await self.bus.publish(message.conversation_id, terminal_event_for(message))
        return orphans

    async def _keep_leases(self) -> None:
        """Every ``lease_s / 3``: renew the leases of the replies running here, then
        end other nodes' orphans. A node that dies is thus found between
        ``2/3`` and ``4/3`` of ``lease_s`` after its last renewal.

        While the database is unreachable nobody can renew, so when it returns
        every lease may have lapsed although its node is alive: orphans are swept
        again only once the store has answered for a whole lease period -- time
        for every live node to renew its own.

        This loop is also the process's watch on its database: an outage is
        logged once with its cause (again only if the cause changes), and its
        end once, never a line per attempt.
        """
        lease = self.settings.lease_s
        sweep_after = 0.0  # monotonic time
        failing: str | None = None  # the cause logged for the outage going on
        failing_since = 0.0
        while True:
            await asyncio.sleep(lease / 3)
            try:
                if self.running:
                    await self.store.renew_leases(
                        self.node_id, list(self.running), utcnow() + timedelta(seconds=lease)
                    )
                else:
                    await self.store.ping()
            except Exception as exc:
                cause = failure_cause(exc)
                if cause != failing:
                    if failing is None:
                        failing_since = time.monotonic()
                    failing = cause
                    log.warning(
                        "database unreachable: %s (running replies cannot renew their leases; "
                        "checking again every %g s)",
                        cause,
                        lease / 3,
                        # a failure that is not an outage is a bug: its traceback, once
                        exc_info=not isinstance(exc, Unavailable),
                    )
                sweep_after = time.monotonic() + lease
                continue
            if failing is not None:
                log.warning(
                    "database reachable again after %.0f s", time.monotonic() - failing_since
                )
                failing = None
            if time.monotonic() < sweep_after:
                continue
            try:
                await self.recover_orphans()
            except Exception as exc:
                log.warning(
                    "orphan sweep failed: %s",
                    failure_cause(exc),
                    exc_info=not isinstance(exc, Unavailable),
                )

    async def drain(self, timeout_s: float) -> None:
        """Stop taking messages, let running replies finish for up to
        ``timeout_s``, then stop the rest (stored ``interrupted`` with their text).

        Returns once every reply that ran here has ended AND its terminal event
        came back through the bus -- so it is in the queues of this process's
        connections, and closing them next loses nothing.
        """
        self.accepting = False
        deadline = time.monotonic() + timeout_s
        ends: dict[str, asyncio.Event] = {}
        unsubscribes: list[Callable[[], Awaitable[None]]] = []
        try:
            # a reply being posted right now joins ``running`` a moment later
            while self.running and time.monotonic() < deadline:
                for generation in list(self.running.values()):
                    if generation.id not in ends:
                        unsubscribes += await self._hear_end(generation, ends)
                await _wait_all([g.done for g in self.running.values()], deadline)
                await asyncio.sleep(0.01)  # an ended reply leaves ``running`` after its done
            for generation in list(self.running.values()):
                generation.cancel("interrupted")
            await _wait_all([g.done for g in self.running.values()], time.monotonic() + 10.0)
            await _wait_all(list(ends.values()), time.monotonic() + _HEAR_END_S)
        finally:
            for unsubscribe in unsubscribes:
                with contextlib.suppress(Exception):
                    await unsubscribe()

    async def _hear_end(
        self, generation: Generation, ends: dict[str, asyncio.Event]
    ) -> list[Callable[[], Awaitable[None]]]:
        """Set ``ends[generation.id]`` when its terminal event is heard on the bus
        (at once if the bus is unreachable: there is nothing to wait for)."""
        heard = ends[generation.id] = asyncio.Event()

        def listener(event: ServerEvent) -> None:
            if isinstance(event, TERMINAL_TYPES) and event.generation_id == generation.id:
                heard.set()

        try:
            return [await self.bus.subscribe(generation.conversation_id, listener)]
        except Unavailable:
            heard.set()
            return []

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
        # a message is stored only while its reply can reach the conversation:
        # with the bus down, nothing is stored and the client retries
        await self.bus.ping()
        with self._reply_slot(owner, frame.client_id):
            return await self._post(owner, frame, model, provider)

    async def _post(
        self, owner: str, frame: MessageCreate, model: str, provider: Provider
    ) -> tuple[Posted, MessageAccepted]:
        started = time.monotonic()
        posted = await self.store.post_user_message(
            owner,
            conversation_id=frame.conversation_id,
            client_id=frame.client_id,
            content=frame.content,
            model=model,
            node_id=self.node_id,
            lease_until=utcnow() + timedelta(seconds=self.settings.lease_s),
            history_max_chars=self.settings.history_max_chars,
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
        assert posted.reply is not None and posted.history is not None
        try:
            await self.bus.publish(posted.conversation.id, accepted)
        except Unavailable:
            # the bus went down since the ping: the message is stored, so its reply
            # runs (it publishes once the bus is back); other tabs miss this event
            log.warning("could not announce message %s: bus unreachable", posted.user.id)
        turns = [Turn(m.role, m.content) for m in posted.history]
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
        self._owner_of[generation.id] = owner
        self._replies_of[owner] = self._replies_of.get(owner, 0) + 1
        generation.start()  # the upstream request goes out next turn, not two turns on
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
            owner = self._owner_of.pop(generation.id, None)
            if owner is not None:
                self._release_reply(owner)

    @contextlib.contextmanager
    def _reply_slot(self, owner: str, ref: str) -> Iterator[None]:
        """Hold one of ``owner``'s running-reply slots while a message is
        posted (a started reply then holds its own until it ends); raise
        :class:`RateLimited` when they are all taken."""
        limit = self.max_running_replies_per_user
        if limit is not None and self._replies_of.get(owner, 0) >= limit:
            raise RateLimited(
                f"at most {limit} replies may run at once: wait for one to end", ref=ref
            )
        self._replies_of[owner] = self._replies_of.get(owner, 0) + 1
        try:
            yield
        finally:
            self._release_reply(owner)

    def _release_reply(self, owner: str) -> None:
        left = self._replies_of.get(owner, 0) - 1
        if left > 0:
            self._replies_of[owner] = left
        else:
            self._replies_of.pop(owner, None)

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
        self,
        owner: str,
        generation_id: str,
        offset: int,
        outbox: Outbox,
        *,
        conversation_id: str | None = None,
        restart: bool = True,
    ) -> Callable[[], Awaitable[None]] | None:
        """Deliver a generation into ``outbox`` from ``offset``:
        ``generation.started``, what exists so far as one delta, then live
        deltas, then its terminal event. Returns an unsubscribe for the live
        part (None when it was already finished). With ``conversation_id``
        the generation must belong to that conversation.

        ``restart`` is a client's resume: the client has exactly ``offset``
        code points, so this connection delivers the generation again from
        there (:meth:`Outbox.rewind`). Without it (the server catching a
        connection up on its own) nothing already delivered is sent twice.

        The live subscription is opened BEFORE the snapshot is read and its
        events are held back until the snapshot is queued (a
        :class:`HeldListener`, the one path of every resume), so nothing
        published in between is lost; the outbox drops whatever overlaps by
        offset.
        """
        message = await self.store.get_message(owner, generation_id)
        if (
            message is None
            or message.role != "assistant"
            or (conversation_id is not None and message.conversation_id != conversation_id)
        ):
            raise NotFound("no such generation", ref=generation_id)
        if message.is_final:
            self._replay_final(message, offset, outbox, restart)
            return None

        live = HeldListener(outbox.push)
        finished = False
        unsubscribe: Callable[[], Awaitable[None]] | None = None

        def listener(event: ServerEvent) -> None:
            nonlocal finished
            if not isinstance(event, GENERATION_TYPES) or event.generation_id != generation_id:
                return
            live.hear(event)
            if isinstance(event, TERMINAL_TYPES):
                finished = True
                if not live.holding and unsubscribe is not None:
                    # the live part ends with the terminal event
                    self.spawn(unsubscribe())

        unsubscribe = await self.bus.subscribe(message.conversation_id, listener)
        try:
            tail = await self.bus.tail(generation_id)
            terminal: GenerationEvent | None = None
            if tail is None:
                # no live tail: it ended and the tail expired (the row is final
                # now), it has not published its start yet, or its process died
                # (orphan recovery will end it)
                message = await self.store.get_message(owner, generation_id) or message
                if message.is_final:
                    # what was held is of a finished reply: never released
                    await unsubscribe()
                    self._replay_final(message, offset, outbox, restart)
                    return None
                started, text = _started_for(message), message.content
                # the client may hold text that was streamed but not yet
                # checkpointed: it gets the rest live, or the stored end
                _check_offset(offset, len(text), generation_id, lenient=True)
            else:
                started, text, terminal = tail.started, tail.text, tail.terminal
                _check_offset(offset, len(text), generation_id)
            _deliver_from(outbox, generation_id, offset, restart)
            outbox.push(started)
            if len(text) > offset:
                outbox.push_replay(GenerationDelta(generation_id, offset, text[offset:]))
            if terminal is not None:
                outbox.push(terminal)
                finished = True
            live.release()
        except BaseException:
            await unsubscribe()
            raise
        if finished:
            await unsubscribe()
            return None
        return unsubscribe

    async def follow_conversation(
        self,
        owner: str,
        conversation_id: str,
        generation_id: str,
        offset: int,
        outbox: Outbox,
    ) -> list[Callable[[], Awaitable[None]]]:
        """Resume a conversation's event stream where a client lost it: the
        generation it was reading from ``offset``, then every message posted
        after that generation (``message.accepted``, and each later reply from
        its start). Returns the unsubscribes of the replies still running.

        Call it with the conversation subscription already open and held (a
        :class:`HeldListener`, released once this returns): whatever is
        published meanwhile then follows the catch-up, deduplicated by the
        outbox.
        """
        unsubscribes: list[Callable[[], Awaitable[None]]] = []
        first = await self.follow(
            owner, generation_id, offset, outbox, conversation_id=conversation_id
        )
        if first is not None:
            unsubscribes.append(first)
        page = await self.store.list_messages(owner, conversation_id, limit=_CATCH_UP_LIMIT)
        later = page or []
        ids = [m.id for m in later]
        if generation_id in ids:
            later = later[ids.index(generation_id) + 1 :]
        replies = {m.reply_to: m.id for m in later if m.role == "assistant"}
        for message in later:
            if message.role == "user":
                outbox.push(
                    MessageAccepted(
                        message.client_id or "", conversation_id, message, replies.get(message.id)
                    )
                )
            elif message.role == "assistant":
                try:
                    more = await self.follow(owner, message.id, 0, outbox, restart=False)
                except NotFound:  # deleted meanwhile
                    continue
                if more is not None:
                    unsubscribes.append(more)
        return unsubscribes

    @staticmethod
    def _replay_final(message: Message, offset: int, outbox: Outbox, restart: bool) -> None:
        # an interrupted reply may have streamed more than its last checkpoint:
        # its terminal event carries the text that was kept
        _check_offset(
            offset, len(message.content), message.id, lenient=message.status == "interrupted"
        )
        _deliver_from(outbox, message.id, offset, restart)
        outbox.push(_started_for(message))
        if len(message.content) > offset:
            outbox.push_replay(GenerationDelta(message.id, offset, message.content[offset:]))
        outbox.push(terminal_event_for(message))


#: at shutdown, how long the ends of the drained replies may take to come back through the bus
_HEAR_END_S = 2.0


async def _wait_all(events: list[asyncio.Event], deadline: float) -> None:
    """Wait until every event is set, or until ``deadline`` (monotonic)."""
    pending = [e.wait() for e in events if not e.is_set()]
    if not pending:
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*pending), max(0.0, deadline - time.monotonic()))


#: how many of a conversation's newest messages a conversation resume looks at
_CATCH_UP_LIMIT = 200


def _deliver_from(outbox: Outbox, generation_id: str, offset: int, restart: bool) -> None:
    if restart:
        outbox.rewind(generation_id, offset)
    else:
        outbox.expect(generation_id, offset)


def _started_for(message: Message) -> GenerationStarted:
    return GenerationStarted(
        message.id, message.conversation_id, message.id, message.reply_to, message.model
    )


def _check_offset(offset: int, length: int, generation_id: str, *, lenient: bool = False) -> None:
    if offset > length and not lenient:
        raise ValidationFailed(
            f"offset {offset} is past the {length} code points of this reply", ref=generation_id
        )
