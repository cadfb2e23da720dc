"""Posting and stopping replies: the user message stored, its reply started
and held in this process's running set until it ends; each user's running
replies capped; Stop delivered here or, through the bus, where the reply runs.

A stored message is answered even when its post failed to say so. A post whose
writes went out but whose answer did not come back (:class:`OutcomeUnknown`:
a timeout, a lost connection) may have been committed -- its reply row then
``streaming``, leased to this process, and not started. Only this process can
tell that row from one it runs (the lease is the same), so it settles it: it
looks for the row until it finds it (and starts the reply, once) or the
database has answered for a whole lease without it. A retry with the same
``client_id`` answers with that reply (``created: false``) on any node, and
here wakes the search at once. If this process dies first, the lease lapses
and the reply ends ``interrupted``, as every reply of a dead process does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta

from .errors import NotFound, OutcomeUnknown, RateLimited, Unavailable
from .events import MessageAccepted, MessageCreate
from .generation import Generation
from .ports import Bus, CompletionRequest, MessageStore, Models, Posted, Provider, Turn
from .records import Message, utcnow
from .settings import CoreSettings

log = logging.getLogger(__name__)

__all__ = ["Posting", "ServiceHooks"]

#: how often the replies of posts with an unknown outcome are looked for
_SETTLE_EVERY_S = 1.0


@dataclass(slots=True)
class ServiceHooks:
    """Observers for metrics; every hook is optional and must not block."""

    first_chunk: Callable[[float], None] | None = None
    generation_finished: Callable[[str, float], None] | None = None  # status, seconds
    message_persisted: Callable[[float], None] | None = None  # seconds
    provider_error: Callable[[str], None] | None = None  # code
    extra: dict[str, object] = field(default_factory=dict)


@dataclass(slots=True)
class _Unsettled:
    """The reply row a post may have committed although it failed (``OutcomeUnknown``)."""

    owner: str
    reply_id: str
    #: when the database first answered without the row (monotonic), None until then
    missing_since: float | None = None


class Posting:
    def __init__(
        self,
        *,
        store: MessageStore,
        bus: Bus,
        models: Models,
        node_id: str,
        settings: CoreSettings,
        hooks: ServiceHooks,
        max_running_replies_per_user: int | None,
        spawn: Callable[[Awaitable[object]], object],
    ) -> None:
        self._store = store
        self._bus = bus
        self._models = models
        self._node_id = node_id
        self._settings = settings
        self._hooks = hooks
        #: replies one user may have running in this process at once (None: no limit)
        self.max_running_replies_per_user = max_running_replies_per_user
        self._spawn = spawn
        self._owner_of: dict[str, str] = {}  # running generation id -> owner
        self._replies_of: dict[str, int] = {}  # owner -> running + being posted
        #: generations running in this process, by id
        self.running: dict[str, Generation] = {}
        #: False once a drain began: no new message is taken
        self.accepting = True
        #: reply rows of posts whose outcome is unknown, by reply id (see the module doc)
        self.unsettled: dict[str, _Unsettled] = {}
        self._settle_now = asyncio.Event()
        self._settling = False

    # ------------------------------------------------------------------ posting

    async def post(self, owner: str, frame: MessageCreate) -> tuple[Posted, MessageAccepted]:
        """Store the user message (committed before this returns), start its
        reply if it is new, and announce both to the conversation.

        Ownership of an existing conversation is checked by the post itself
        (:class:`NotFound` for a missing or foreign one), in the same round
        trip that stores the message. The bus is not pinged first: a ping
        answered is no promise for the publish that follows (a bus lost
        meanwhile is handled below), and the caller's subscription to the
        conversation already needed the bus (:class:`Unavailable` when it is
        down).

        :class:`OutcomeUnknown` when the store cannot tell whether the post was
        committed; if it was, its reply is started here shortly after (see the
        module doc), and a retry with the same ``client_id`` returns it."""
        if not self.accepting:
            raise Unavailable("the server is shutting down; retry with the same client_id")
        model = frame.model or self._models.default
        provider = self._models.get(model)  # ValidationFailed for an unknown model
        with self._reply_slot(owner, frame.client_id):
            try:
                return await self._post(owner, frame, model, provider)
            except OutcomeUnknown as exc:
                if exc.reply_id is not None:
                    self._settle_later(owner, exc.reply_id)
                raise

    async def _post(
        self, owner: str, frame: MessageCreate, model: str, provider: Provider
    ) -> tuple[Posted, MessageAccepted]:
        settings = self._settings
        started = time.monotonic()
        posted = await self._store.post_user_message(
            owner,
            conversation_id=frame.conversation_id,
            client_id=frame.client_id,
            content=frame.content,
            model=model,
            node_id=self._node_id,
            lease_until=utcnow() + timedelta(seconds=settings.lease_s),
            history_max_chars=settings.history_max_chars,
        )
        if self._hooks.message_persisted is not None:
            self._hooks.message_persisted(time.monotonic() - started)
        accepted = MessageAccepted(
            frame.client_id,
            posted.conversation.id,
            posted.user,
            posted.reply.id if posted.reply is not None else None,
        )
        if not posted.created:
            if posted.reply is not None and posted.reply.id in self.unsettled:
                self._settle_now.set()  # the retry of a post that may have stored it: start it
            return posted, accepted
        assert posted.reply is not None and posted.history is not None
        try:
            await self._announce(accepted)
        finally:
            # the message is stored: its reply runs, even if the caller went away meanwhile
            self._launch(owner, posted.reply, posted.history, provider)
        return posted, accepted

    async def _announce(self, accepted: MessageAccepted) -> None:
        try:
            await self._bus.publish(accepted.conversation_id, accepted)
        except Unavailable:
            # the bus is down: the message is stored, so its reply runs (it
            # publishes once the bus is back); other tabs miss this event
            log.warning("could not announce message %s: bus unreachable", accepted.message.id)

    def _launch(
        self, owner: str, reply: Message, history: list[Message], provider: Provider
    ) -> None:
        """Start ``reply`` (a ``streaming`` row leased to this process) in the running set."""
        settings = self._settings
        turns = [Turn(m.role, m.content) for m in history]
        if settings.system_prompt:
            turns.insert(0, Turn("system", settings.system_prompt))
        generation = Generation(
            reply=reply,
            provider=provider,
            request=CompletionRequest(turns),
            store=self._store,
            bus=self._bus,
            checkpoint_interval_s=settings.checkpoint_interval_s,
            finish_retry_s=settings.finish_retry_s,
            on_first_chunk=self._hooks.first_chunk,
        )
        self.running[generation.id] = generation
        self._owner_of[generation.id] = owner
        self._replies_of[owner] = self._replies_of.get(owner, 0) + 1
        generation.start()  # the upstream request goes out next turn, not two turns on
        self._spawn(self._run(generation))

    # ------------------------------------------------------------------ unknown outcomes

    def _settle_later(self, owner: str, reply_id: str) -> None:
        """Look for ``reply_id`` (see the module doc) until it is settled."""
        self.unsettled[reply_id] = _Unsettled(owner, reply_id)
        if not self._settling:
            self._settling = True
            self._spawn(self._settle_all())

    async def _settle_all(self) -> None:
        """Every :data:`_SETTLE_EVERY_S`, or at once when a retry asks: settle what
        can be settled; while the database does not answer, try again later."""
        try:
            while self.unsettled and self.accepting:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._settle_now.wait(), _SETTLE_EVERY_S)
                self._settle_now.clear()
                for entry in list(self.unsettled.values()):
                    try:
                        settled = await self._settle(entry)
                    except Unavailable:
                        break  # the database is still out of reach: next round
                    except Exception:
                        log.exception("could not start reply %s", entry.reply_id)
                        settled = True
                    if settled:
                        self.unsettled.pop(entry.reply_id, None)
        finally:
            self._settling = False
            if not self.accepting and self.unsettled:
                log.warning(
                    "shutting down: %d replies of posts with an unknown outcome were not "
                    "started (they end interrupted once their lease lapses)",
                    len(self.unsettled),
                )
                self.unsettled.clear()

    async def _settle(self, entry: _Unsettled) -> bool:
        """Start ``entry``'s reply if its row was committed and is still
        ``streaming``; True once there is nothing more to do for it."""
        store, settings = self._store, self._settings
        reply = await store.get_message(entry.owner, entry.reply_id)
        if reply is None:
            now = time.monotonic()
            if entry.missing_since is None:
                entry.missing_since = now
            if now - entry.missing_since < settings.lease_s:
                return False  # not committed, or not yet: a held statement may still arrive
            # The database answered for a whole lease without it: a statement
            # arriving later still finds its lease lapsed and ends interrupted.
            log.info("reply %s of a post with an unknown outcome was never stored", entry.reply_id)
            return True
        user_id = reply.reply_to
        if reply.status != "streaming" or user_id is None or reply.id in self.running:
            return True
        # The lease, renewed on the row found streaming, is this process's claim
        # for a lease more: no orphan sweep ends it meanwhile. Read again: the
        # renewal changed nothing if a sweep ended the row in between.
        lease_until = utcnow() + timedelta(seconds=settings.lease_s)
        await store.renew_leases(self._node_id, [reply.id], lease_until)
        reply = await store.get_message(entry.owner, entry.reply_id)
        user = await store.get_message(entry.owner, user_id) if reply else None
        if reply is None or reply.status != "streaming" or user is None:
            return True
        history = await store.history(
            reply.conversation_id, before=user, max_chars=settings.history_max_chars
        )
        provider = self._models.get(reply.model or self._models.default)
        if reply.id in self.running or entry.reply_id not in self.unsettled:
            return True
        self.unsettled.pop(entry.reply_id)
        accepted = MessageAccepted(user.client_id or "", reply.conversation_id, user, reply.id)
        try:
            await self._announce(accepted)
        finally:
            self._launch(entry.owner, reply, history, provider)
        log.info("reply %s of a post with an unknown outcome started", reply.id)
        return True

    async def _run(self, generation: Generation) -> None:
        hooks = self._hooks
        try:
            terminal = await generation.run()
            if hooks.generation_finished is not None:
                hooks.generation_finished(
                    terminal.message.status, time.monotonic() - generation.started_at
                )
            error = getattr(terminal, "error", None)
            if error is not None and hooks.provider_error is not None:
                hooks.provider_error(error.code)
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

    # ------------------------------------------------------------------ stopping

    async def cancel(self, owner: str, generation_id: str) -> Message:
        """Stop a running reply wherever it runs. Cancelling a reply that has
        already ended is not an error: it answers with the stored message."""
        message = await self._store.get_message(owner, generation_id)
        if message is None or message.role != "assistant":
            raise NotFound("no such generation", ref=generation_id)
        if message.is_final:
            return message
        if not self.cancel_local(generation_id):
            await self._bus.request_cancel(generation_id)
        return message

    def cancel_local(self, generation_id: str) -> bool:
        """Stop the reply if it runs in this process (a cancel request from the
        bus lands here too); False if it does not."""
        generation = self.running.get(generation_id)
        if generation is None:
            return False
        generation.cancel("cancelled")
        return True

    async def cancel_conversation(self, conversation_id: str) -> None:
        """Cancel every running reply of a conversation (before it is deleted)."""
        for generation in list(self.running.values()):
            if generation.conversation_id == conversation_id:
                generation.cancel("cancelled")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(generation.done.wait(), 5.0)
