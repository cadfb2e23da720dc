"""Resume as a plan: which events catch a connection up on one reply.

Pure: given what is known of the reply (the stored message, or its live tail),
the client's offset and whether the client asked for it (``restart``), it says
what to queue, or refuses an offset the reply does not have. Nothing here
waits, reads the store or the bus: every case is testable without asyncio.
:class:`~sanic_chat.core.following.Following` reads, plans, then queues the
plan (:meth:`Replay.queue_into`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import ValidationFailed
from .events import TERMINAL_TYPES, GenerationDelta, GenerationEvent, GenerationStarted
from .generation import terminal_event_for
from .offsets import started_event
from .ports import Tail
from .records import Message

if TYPE_CHECKING:
    from .outbox import Outbox

__all__ = ["Replay", "plan_final", "plan_replay", "plan_running"]


@dataclass(frozen=True, slots=True)
class Replay:
    """What to queue for one reply: ``events`` (its start, the text from
    ``offset`` as one delta, its terminal event if it ended), delivered from
    ``offset``."""

    generation_id: str
    offset: int
    #: a client's resume: it has exactly ``offset`` code points, so the reply
    #: is delivered again from there (:meth:`Outbox.rewind`); otherwise (the
    #: server catching a connection up) nothing already delivered is sent twice
    restart: bool
    events: tuple[GenerationEvent, ...]

    @property
    def ended(self) -> bool:
        """The plan holds the reply's terminal event."""
        return isinstance(self.events[-1], TERMINAL_TYPES)

    def queue_into(self, outbox: Outbox) -> None:
        if self.restart:
            outbox.rewind(self.generation_id, self.offset)
        else:
            outbox.expect(self.generation_id, self.offset)
        for event in self.events:
            if isinstance(event, GenerationDelta):
                # counted against the outbox's bound only once sent: a reply
                # longer than the bound must still be resumable
                outbox.push_replay(event)
            else:
                outbox.push(event)


def plan_replay(
    started: GenerationStarted,
    text: str,
    terminal: GenerationEvent | None,
    *,
    offset: int,
    restart: bool,
    lenient: bool = False,
) -> Replay:
    """The plan for a reply known as ``started``, ``text`` so far and its
    ``terminal`` event (None while it runs). An ``offset`` past the text is
    refused (:class:`ValidationFailed`) unless ``lenient``: the client may hold
    text that was streamed but not kept, and gets what there is."""
    generation_id = started.generation_id
    if offset > len(text) and not lenient:
        raise ValidationFailed(
            f"offset {offset} is past the {len(text)} code points of this reply",
            ref=generation_id,
        )
    events: list[GenerationEvent] = [started]
    if len(text) > offset:
        events.append(GenerationDelta(generation_id, offset, text[offset:]))
    if terminal is not None:
        events.append(terminal)
    return Replay(generation_id, offset, restart, tuple(events))


def plan_final(message: Message, offset: int, *, restart: bool) -> Replay:
    """A finished reply, from the database."""
    # an interrupted reply may have streamed more than its last checkpoint:
    # its terminal event carries the text that was kept
    return plan_replay(
        started_event(message),
        message.content,
        terminal_event_for(message),
        offset=offset,
        restart=restart,
        lenient=message.status == "interrupted",
    )


def plan_running(message: Message, tail: Tail | None, offset: int, *, restart: bool) -> Replay:
    """A reply still ``streaming`` in the database: from its live ``tail``
    (which may already hold its end), or, with no tail (it has not published
    its start yet, or its process died and orphan recovery will end it), from
    its last checkpoint."""
    if tail is None:
        # the client may hold text that was streamed but not yet checkpointed:
        # it gets the rest live, or the stored end
        return plan_replay(
            started_event(message),
            message.content,
            None,
            offset=offset,
            restart=restart,
            lenient=True,
        )
    return plan_replay(tail.started, tail.text, tail.terminal, offset=offset, restart=restart)
