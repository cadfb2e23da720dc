"""A reply's text by offset: the two primitives every holder of a reply shares.

A reply is ``generation.started``, deltas whose ``offset`` is the number of
code points before them, and a terminal event. Whoever keeps a reply's text
(the outbox, the in-memory bus's tail, the Redis tail) joins deltas with
:func:`text_beyond`, so a delta repeated or overlapping (a retried publish, a
replay racing the live tail) never doubles text; whoever has to announce a
reply it did not see start (a resume, an orphan's tail) builds the start with
:func:`started_event`.
"""

from __future__ import annotations

from .events import GenerationStarted
from .records import Message

__all__ = ["started_event", "text_beyond"]


def started_event(reply: Message) -> GenerationStarted:
    """The ``generation.started`` of an assistant message (its id is the generation's)."""
    return GenerationStarted(reply.id, reply.conversation_id, reply.id, reply.reply_to, reply.model)


def text_beyond(held: int, offset: int, text: str) -> str | None:
    """What ``text``, starting at ``offset``, adds to ``held`` code points already
    held: ``""`` when it holds nothing new (repeated, or wholly overlapped), its
    tail past ``held`` when it overlaps, and None when it starts beyond ``held``
    (a gap: text is missing in between, and appending it would corrupt offsets)."""
    if offset > held:
        return None
    if offset + len(text) <= held:
        return ""
    return text if offset == held else text[held - offset :]
