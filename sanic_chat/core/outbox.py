"""One connection's outbound queue: exactly-once by offset, merged when slow.

Invariants, per generation, for everything that leaves through one outbox:

* text is delivered exactly once and in order: a delta (or part of one) whose
  code points were already queued is dropped, so replay-then-live, a
  conversation subscription plus a resume, or a bus that delivers twice can
  never show a client the same text twice;
* consecutive deltas of one generation still waiting in the queue are merged
  into one frame, so a consumer that reads slowly receives fewer, larger
  frames instead of an ever-growing queue;
* ``generation.started`` and the terminal event are delivered at most once,
  except after :meth:`Outbox.rewind` (an explicit resume), which delivers the
  generation again from the client's offset, started and terminal included.

The queue is bounded by the text it holds (``max_pending_chars``) and the
number of frames (``max_pending_frames``); past either the outbox overflows:
``get`` raises :class:`SlowConsumer` and the transport closes the connection
with a resumable close code. The client resumes by offset. The text a resume
replays at once (:meth:`Outbox.push_replay`) is not counted until it is sent:
the bound is on falling behind, and a reply longer than the bound must still
be resumable.

What deduplication remembers is bounded too: a connection may stay open for
days. The state of a generation (offset delivered, started, ended, flowing)
is forgotten once :data:`REMEMBERED_REPLIES` newer ones have ended on this
connection, and at most that many accepted message ids are kept. Duplicates
come within moments of the original (a resume racing the live tail, a bus
delivering twice), not dozens of replies later. Without the bound every
reply added five entries per connection forever: at 300 users, about 1 MB a
minute in a 30-minute soak.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from .events import (
    GENERATION_TYPES,
    TERMINAL_TYPES,
    GenerationDelta,
    GenerationStarted,
    MessageAccepted,
    ServerEvent,
)
from .offsets import text_beyond

log = logging.getLogger(__name__)

__all__ = ["HeldListener", "Outbox", "SlowConsumer"]

#: how many ended generations (and accepted messages) one outbox remembers.
#: Small on purpose: a connection reaches the bound after this many replies,
#: and its memory is flat from then on; clients deduplicate by offset too.
REMEMBERED_REPLIES = 32
#: generations that started but never ended here (e.g. unsubscribed mid-reply)
#: are forgotten past this many
_REMEMBERED_STARTS = 4 * REMEMBERED_REPLIES


class SlowConsumer(Exception):
    """The consumer fell further behind than the outbox may hold: the transport
    drops the connection in its own way (WebSocket: a resumable close code, SSE:
    the stream ends), and the client resumes by offset."""


class HeldListener:
    """A bus listener (:meth:`hear`) that holds what it hears until
    :meth:`release`, then passes every event on to ``sink`` (an outbox's
    ``push``) as it comes.

    Every resume takes this one path -- ``generation.resume``, a
    ``conversation.subscribe`` with a reply and an offset, either SSE stream:
    it registers a held listener BEFORE it reads what it replays (the live
    tail or the stored reply, and a conversation's later messages), queues the
    replay, then releases the listener. Nothing published meanwhile is lost,
    the live events follow the replay in publish order, and the outbox drops
    whatever of them the replay already holds (text by offset, the rest by
    id). A listener that queued live events at once would let the
    connection's writer send them before the replay's ``generation.started``,
    and the same text again inside the replay.
    """

    __slots__ = ("_held", "_sink")

    def __init__(self, sink: Callable[[ServerEvent], None]) -> None:
        self._sink = sink
        self._held: list[ServerEvent] | None = []

    def hear(self, event: ServerEvent) -> None:
        """The listener to register (a bound method: cheaper to call than an
        instance's ``__call__``, and this runs for every live delta)."""
        held = self._held
        if held is None:
            self._sink(event)
        else:
            held.append(event)

    @property
    def holding(self) -> bool:
        return self._held is not None

    def release(self) -> None:
        """Pass on what was held, in order; from now on every event at once."""
        held, self._held = self._held, None
        for event in held or ():
            self._sink(event)


class Outbox:
    __slots__ = (
        "_accepted",
        "_allowance",
        "_closed",
        "_delivered_upto",
        "_finished",
        "_flowing",
        "_linger_waiter",
        "_max_chars",
        "_max_frames",
        "_pending_chars",
        "_queue",
        "_replayed",
        "_started",
        "_wakeup",
        "frames_merged",
        "overflowed",
    )

    def __init__(
        self, *, max_pending_chars: int = 2_000_000, max_pending_frames: int = 10_000
    ) -> None:
        self._queue: deque[ServerEvent] = deque()
        self._wakeup = asyncio.Event()
        self._max_chars = max_pending_chars
        self._max_frames = max_pending_frames
        self._pending_chars = 0
        #: replayed text still queued, per generation, and in all: not counted
        self._replayed: dict[str, int] = {}
        self._allowance = 0
        #: generation id -> end offset of the text already queued or sent
        self._delivered_upto: dict[str, int] = {}
        # insertion-ordered (dicts, values unused), so the oldest go first
        self._started: dict[str, None] = {}
        self._finished: dict[str, None] = {}
        self._accepted: dict[str, None] = {}
        self._closed = False
        #: generations whose first text was already taken by the consumer
        self._flowing: set[str] = set()
        self._linger_waiter: asyncio.Future[None] | None = None
        self.overflowed = False
        self.frames_merged = 0

    # ------------------------------------------------------------------ producers

    def expect(self, generation_id: str, offset: int) -> None:
        """The client already has ``offset`` code points of this generation;
        whatever was delivered beyond that is not delivered again."""
        current = self._delivered_upto.get(generation_id, 0)
        self._delivered_upto[generation_id] = max(current, offset)

    def rewind(self, generation_id: str, offset: int) -> None:
        """The client has exactly ``offset`` code points of this generation and
        asked for the rest (a resume): whatever of it is still queued is dropped
        and its text, ``generation.started`` and terminal event will be
        delivered again from ``offset``. A resume may go back on purpose: a tab
        that joined mid-reply asks for the beginning."""
        queue = self._queue
        if any(isinstance(e, GENERATION_TYPES) and e.generation_id == generation_id for e in queue):
            kept: deque[ServerEvent] = deque()
            for event in queue:
                if isinstance(event, GENERATION_TYPES) and event.generation_id == generation_id:
                    if isinstance(event, GenerationDelta):
                        self._pending_chars -= len(event.text)
                        self._allowance -= self._replayed.pop(generation_id, 0)
                    continue
                kept.append(event)
            self._queue = kept
        self._delivered_upto[generation_id] = offset
        self._started.pop(generation_id, None)
        self._finished.pop(generation_id, None)

    def push(self, event: ServerEvent) -> None:
        """Queue ``event`` (never blocks; this is a bus listener)."""
        if self._closed:
            return
        if isinstance(event, GenerationDelta):
            self._push_delta(event)
        elif isinstance(event, GenerationStarted):
            if event.generation_id in self._started:
                return
            self._started[event.generation_id] = None
            if len(self._started) > _REMEMBERED_STARTS:
                self._forget(next(iter(self._started)))
            self._append(event)
        elif isinstance(event, TERMINAL_TYPES):
            if event.generation_id in self._finished:
                return
            self._finished[event.generation_id] = None
            self._started[event.generation_id] = None
            if len(self._finished) > REMEMBERED_REPLIES:
                self._forget(next(iter(self._finished)))
            self._append(event)
        elif isinstance(event, MessageAccepted):
            # the bus echoes a connection's own message.accepted back to it
            if event.message.id in self._accepted:
                return
            self._remember_accepted(event.message.id)
            self._append(event)
        else:
            self._append(event)

    def push_replay(self, delta: GenerationDelta) -> None:
        """Queue the text a resume replays in one go (the live tail or the
        stored reply from the client's offset): deduplicated like any delta,
        but not counted against ``max_pending_chars`` until it is sent."""
        if not self._closed:
            self._push_delta(delta, replay=True)

    def push_answer(self, accepted: MessageAccepted) -> None:
        """Queue the answer to this connection's own ``message.create``: always
        delivered, even for a resend of a message this connection saw before."""
        if self._closed:
            return
        self._remember_accepted(accepted.message.id)
        self._append(accepted)

    def _remember_accepted(self, message_id: str) -> None:
        accepted = self._accepted
        accepted[message_id] = None
        if len(accepted) > REMEMBERED_REPLIES:
            del accepted[next(iter(accepted))]

    def _forget(self, generation_id: str) -> None:
        """Drop what deduplication knows of one old generation (its text
        still queued, if any, is sent as usual)."""
        self._started.pop(generation_id, None)
        self._finished.pop(generation_id, None)
        self._delivered_upto.pop(generation_id, None)
        self._flowing.discard(generation_id)

    def _push_delta(self, delta: GenerationDelta, *, replay: bool = False) -> None:
        gid = delta.generation_id
        if gid in self._finished:
            return
        upto = self._delivered_upto.get(gid)
        offset, text = delta.offset, delta.text
        if upto is not None:
            new = text_beyond(upto, offset, text)
            if new is None:
                # a gap: something upstream lost text. Pass it on -- the client
                # sees the jump in offsets and resumes -- but make it loud.
                log.warning("offset gap in generation %s: have %d, got %d", gid, upto, offset)
            elif not new:
                return
            else:
                text, offset = new, upto
        self._delivered_upto[gid] = offset + len(text)
        if replay:
            self._replayed[gid] = self._replayed.get(gid, 0) + len(text)
            self._allowance += len(text)
        queue = self._queue
        if queue:
            last = queue[-1]
            if (
                isinstance(last, GenerationDelta)
                and last.generation_id == gid
                and last.offset + len(last.text) == offset
            ):
                queue[-1] = GenerationDelta(gid, last.offset, last.text + text)
                self.frames_merged += 1
                self._pending_chars += len(text)
                self._check_bounds()
                return
        if text is delta.text:
            self._append(delta, len(text))
        else:
            self._append(GenerationDelta(gid, offset, text), len(text))

    def _append(self, event: ServerEvent, chars: int = 0) -> None:
        self._queue.append(event)
        self._pending_chars += chars
        self._check_bounds()
        self._wakeup.set()
        if self._linger_waiter is not None and not (
            isinstance(event, GenerationDelta) and event.generation_id in self._flowing
        ):
            # anything but more of a flowing reply is sent without lingering
            self._end_linger()

    def _end_linger(self) -> None:
        waiter = self._linger_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _check_bounds(self) -> None:
        if (
            self._pending_chars - self._allowance > self._max_chars
            or len(self._queue) > self._max_frames
        ):
            self.overflowed = True
            self._closed = True
            self._queue.clear()
            self._replayed.clear()
            self._pending_chars = self._allowance = 0
            self._wakeup.set()
            self._end_linger()

    def close(self) -> None:
        """No more events; a waiting ``get`` returns None."""
        self._closed = True
        self._wakeup.set()
        self._end_linger()

    # ------------------------------------------------------------------ consumer

    def get_nowait(self) -> ServerEvent | None:
        if self.overflowed:
            raise SlowConsumer()
        if not self._queue:
            return None
        event = self._queue.popleft()
        if isinstance(event, GenerationDelta):
            self._flowing.add(event.generation_id)
            self._pending_chars -= len(event.text)
            if self._replayed:
                self._allowance -= self._replayed.pop(event.generation_id, 0)
        return event

    async def get(self) -> ServerEvent | None:
        """The next event, waiting for one; None once closed and drained."""
        while True:
            event = self.get_nowait()
            if event is not None:
                return event
            if self._closed:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()

    async def get_batch(
        self, linger_s: float = 0.0, timeout_s: float | None = None
    ) -> list[ServerEvent] | None:
        """Every queued event, waiting for at least one; None once closed and
        drained; an empty list when ``timeout_s`` passed with nothing to send
        (time for a heartbeat).

        With ``linger_s`` > 0, a batch holding nothing but more text of replies
        already flowing to this consumer waits up to ``linger_s`` first, so the
        text arriving meanwhile merges into the same frames: fewer, larger
        frames when the server is busy. A reply's first text, its start and
        end, and every other event are never held back: they end the wait.
        """
        if not self._queue:
            timed_out = False
            timer: asyncio.TimerHandle | None = None
            if timeout_s is not None:

                def time_out() -> None:
                    nonlocal timed_out
                    timed_out = True
                    self._wakeup.set()

                timer = asyncio.get_running_loop().call_later(timeout_s, time_out)
            try:
                while not self._queue:
                    if self.overflowed:
                        raise SlowConsumer()
                    if self._closed:
                        return None
                    if timed_out:
                        return []
                    self._wakeup.clear()
                    await self._wakeup.wait()
            finally:
                if timer is not None:
                    timer.cancel()
        if linger_s > 0 and not self._closed and self._only_flowing_text():
            loop = asyncio.get_running_loop()
            waiter = self._linger_waiter = loop.create_future()
            linger = loop.call_later(linger_s, self._end_linger)
            try:
                await waiter
            finally:
                linger.cancel()
                self._linger_waiter = None
        batch: list[ServerEvent] = []
        while (event := self.get_nowait()) is not None:
            batch.append(event)
        return batch

    def _only_flowing_text(self) -> bool:
        flowing = self._flowing
        return all(
            isinstance(e, GenerationDelta) and e.generation_id in flowing for e in self._queue
        )

    @property
    def pending(self) -> int:
        return len(self._queue)

    def delivered_upto(self, generation_id: str) -> int | None:
        return self._delivered_upto.get(generation_id)

    def is_finished(self, generation_id: str) -> bool:
        return generation_id in self._finished
