"""Following replies for a connection: resume by offset, from the live tail or
the database, and a conversation's catch-up after a lost stream.

What to queue is decided by the pure plans of :mod:`.replay`; this module
does the reading, in the one order that loses nothing (see :meth:`follow`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from .errors import NotFound
from .events import GENERATION_TYPES, TERMINAL_TYPES, MessageAccepted, ServerEvent
from .outbox import HeldListener, Outbox
from .ports import Bus, MessageStore
from .replay import plan_final, plan_running

__all__ = ["Following"]

#: how many of a conversation's newest messages a conversation resume looks at
_CATCH_UP_LIMIT = 200

Unsubscribe = Callable[[], Awaitable[None]]


class Following:
    def __init__(
        self, *, store: MessageStore, bus: Bus, spawn: Callable[[Awaitable[object]], object]
    ) -> None:
        self._store = store
        self._bus = bus
        self._spawn = spawn

    async def follow(
        self,
        owner: str,
        generation_id: str,
        offset: int,
        outbox: Outbox,
        *,
        conversation_id: str | None = None,
        restart: bool = True,
    ) -> Unsubscribe | None:
        """Deliver a generation into ``outbox`` from ``offset``:
        ``generation.started``, what exists so far as one delta, then live
        deltas, then its terminal event. Returns an unsubscribe for the live
        part (None when it was already finished). With ``conversation_id``
        the generation must belong to that conversation. ``restart``: see
        :attr:`~sanic_chat.core.replay.Replay.restart`.

        The live subscription is opened BEFORE the snapshot is read and its
        events are held back until the snapshot is queued (a
        :class:`HeldListener`, the one path of every resume), so nothing
        published in between is lost; the outbox drops whatever overlaps by
        offset.
        """
        message = await self._store.get_message(owner, generation_id)
        if (
            message is None
            or message.role != "assistant"
            or (conversation_id is not None and message.conversation_id != conversation_id)
        ):
            raise NotFound("no such generation", ref=generation_id)
        if message.is_final:
            plan_final(message, offset, restart=restart).queue_into(outbox)
            return None

        live = HeldListener(outbox.push)
        finished = False
        unsubscribe: Unsubscribe | None = None

        def listener(event: ServerEvent) -> None:
            nonlocal finished
            if not isinstance(event, GENERATION_TYPES) or event.generation_id != generation_id:
                return
            live.hear(event)
            if isinstance(event, TERMINAL_TYPES):
                finished = True
                if not live.holding and unsubscribe is not None:
                    # the live part ends with the terminal event
                    self._spawn(unsubscribe())

        unsubscribe = await self._bus.subscribe(message.conversation_id, listener)
        try:
            tail = await self._bus.tail(generation_id)
            if tail is None:
                # no live tail: it ended and the tail expired (the row is final
                # now), it has not published its start yet, or its process died
                message = await self._store.get_message(owner, generation_id) or message
                if message.is_final:
                    # what was held is of a finished reply: never released
                    await unsubscribe()
                    plan_final(message, offset, restart=restart).queue_into(outbox)
                    return None
            replay = plan_running(message, tail, offset, restart=restart)
            replay.queue_into(outbox)
            finished = finished or replay.ended
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
    ) -> list[Unsubscribe]:
        """Resume a conversation's event stream where a client lost it: the
        generation it was reading from ``offset``, then every message posted
        after that generation (``message.accepted``, and each later reply from
        its start). Returns the unsubscribes of the replies still running.

        Call it with the conversation subscription already open and held (a
        :class:`HeldListener`, released once this returns): whatever is
        published meanwhile then follows the catch-up, deduplicated by the
        outbox.
        """
        unsubscribes: list[Unsubscribe] = []
        first = await self.follow(
            owner, generation_id, offset, outbox, conversation_id=conversation_id
        )
        if first is not None:
            unsubscribes.append(first)
        page = await self._store.list_messages(owner, conversation_id, limit=_CATCH_UP_LIMIT)
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
