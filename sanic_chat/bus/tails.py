"""Live tails in Redis streams: the scripts that write and read them, the join by offset,
and what this process needs to restore the tails of its running replies.

A tail is the stream ``{prefix}:gen:{generation_id}``, one entry per generation event
(field ``e``: the event JSON). Redis needs no persistence for it, because each running
reply is restored by the process that runs it: this process remembers the start and the
text of every reply it publishes until that reply's terminal event. When a delta finds
its stream gone (Redis restarted, or the key was lost), the publish script refuses it and
the bus writes the start and the whole text so far instead (``RESTORE_SCRIPT``); after
the pub/sub connection comes back, every open tail is restored the same way. A resumer
then finds the whole text in the tail, in one resume.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field

import orjson

from sanic_chat.core.events import (
    TERMINAL_TYPES,
    GenerationDelta,
    GenerationStarted,
    TerminalEvent,
    event_from_wire,
)
from sanic_chat.core.offsets import started_event, text_beyond
from sanic_chat.core.ports import Tail

log = logging.getLogger(__name__)

__all__ = [
    "PUBLISH_SCRIPT",
    "PUBLISH_SHA",
    "RESTORE_SCRIPT",
    "RESTORE_SHA",
    "TAIL_LOST",
    "TAIL_SCRIPT",
    "TAIL_SHA",
    "OpenTail",
    "OpenTails",
    "join_tail",
]

# ARGV: channel, payload, mode (o=open, d=delta, c=close), safety ms, refresh-below ms, close ms.
# A delta refreshes the safety expiry once less than half of it is left, but never on a
# closed tail: a closed tail's remaining life is at most ``close ms``, which is kept below
# ``refresh-below ms``, and an open tail whose deltas keep coming never gets that low.
# A delta whose stream is gone is refused (TAIL_LOST, neither appended nor published):
# appended alone it would start a tail with a gap; the publisher restores the tail instead.
PUBLISH_SCRIPT = b"""
local key = KEYS[1]
local mode = ARGV[3]
local left = 0
if mode == 'd' then
  left = redis.call('PTTL', key)
  if left == -2 then return -1 end
end
redis.call('XADD', key, '*', 'e', ARGV[2])
if mode == 'o' then
  redis.call('PEXPIRE', key, ARGV[4])
elseif mode == 'c' then
  redis.call('PEXPIRE', key, ARGV[6])
elseif left < 0 or (left < tonumber(ARGV[5]) and left > tonumber(ARGV[6])) then
  redis.call('PEXPIRE', key, ARGV[4])
end
return redis.call('PUBLISH', ARGV[1], ARGV[2])
"""

#: what the publish script answers for a delta whose stream is gone
TAIL_LOST = -1

# KEYS: the stream. ARGV: channel, started JSON, delta JSON (the whole text from offset 0,
# or empty), safety ms. Writes nothing when the stream exists (restored already, or never
# lost); else the start and the whole text, and publishes that delta so that followers
# who joined from the database checkpoint get the text they are missing (offsets trim the
# rest). Returns 1 when it restored.
RESTORE_SCRIPT = b"""
local key = KEYS[1]
if redis.call('EXISTS', key) == 1 then return 0 end
redis.call('XADD', key, '*', 'e', ARGV[2])
if ARGV[3] ~= '' then
  redis.call('XADD', key, '*', 'e', ARGV[3])
  redis.call('PUBLISH', ARGV[1], ARGV[3])
end
redis.call('PEXPIRE', key, ARGV[4])
return 1
"""

# One XRANGE, returned as ONE JSON array of the entries' payloads: parsing 8,000 stream
# entries as RESP in Python costs ~60 ms, one orjson.loads of the array ~3 ms.
TAIL_SCRIPT = b"""
local entries = redis.call('XRANGE', KEYS[1], '-', '+')
if #entries == 0 then return false end
local payloads = {}
for i, entry in ipairs(entries) do payloads[i] = entry[2][2] end
return '[' .. table.concat(payloads, ',') .. ']'
"""

PUBLISH_SHA = hashlib.sha1(PUBLISH_SCRIPT).hexdigest()
RESTORE_SHA = hashlib.sha1(RESTORE_SCRIPT).hexdigest()
TAIL_SHA = hashlib.sha1(TAIL_SCRIPT).hexdigest()

_DELTA = "generation.delta"
_STARTED = "generation.started"
_TERMINALS = frozenset({"generation.completed", "generation.cancelled", "generation.failed"})


def join_tail(generation_id: str, raw: bytes) -> Tail | None:
    """The tail in ``raw`` (``TAIL_SCRIPT``'s answer), in one pass: deltas are joined by
    offset (a delta that overlaps what is already there is trimmed, a repeated one
    skipped), so a retried publish never doubles text. A gap (a delta missing from the
    stream) ends the text there, unless the terminal event says what the whole text is."""
    started: GenerationStarted | None = None
    terminal: TerminalEvent | None = None
    parts: list[str] = []
    length = 0
    gap = False
    for wire in orjson.loads(raw):
        kind = wire["type"]
        if kind == _DELTA:
            if gap or terminal is not None:
                continue
            new = text_beyond(length, wire["offset"], wire["text"])
            if new:
                parts.append(new)
                length += len(new)
            elif new is None:
                gap = True
                log.warning("tail of %s has a gap at offset %d", generation_id, length)
        elif kind == _STARTED:
            if started is None:
                event = event_from_wire(wire)
                assert isinstance(event, GenerationStarted)
                started = event
        elif kind in _TERMINALS and terminal is None:
            event = event_from_wire(wire)
            assert isinstance(event, TERMINAL_TYPES)
            terminal = event
    if terminal is not None and (started is None or gap):
        # a terminal without a live tail (an orphan marked interrupted elsewhere), or a
        # damaged one: the terminal's message is the whole reply
        message = terminal.message
        if started is None:
            started = started_event(message)
        return Tail(started, message.content, terminal, started.conversation_id)
    if started is None:
        return None
    return Tail(started, "".join(parts), terminal, started.conversation_id)


@dataclass(slots=True)
class OpenTail:
    """A reply this process publishes and has not ended: enough to write its tail anew."""

    channel: bytes
    started: bytes  # the generation.started JSON, as published
    parts: list[str] = field(default_factory=list)
    length: int = 0
    opened_at: float = field(default_factory=time.monotonic)

    def extend(self, delta: GenerationDelta) -> None:
        """Join ``delta`` by offset, as a resumer would."""
        offset, text = delta.offset, delta.text
        if offset < self.length:
            text = text[self.length - offset :]
        elif offset > self.length:
            log.warning(
                "publishing %s with a gap: have %d, got %d",
                delta.generation_id,
                self.length,
                offset,
            )
        if text:
            self.parts.append(text)
            self.length = max(offset, self.length) + len(text)

    def text(self) -> str:
        text = "".join(self.parts)
        self.parts = [text] if text else []
        return text


class OpenTails:
    """The open tails of this process, by generation id. A reply whose end was never
    published (its process kept failing to reach Redis) is forgotten ``forget_after_s``
    after it started (the bus's safety expiry: no reply runs that long)."""

    def __init__(self, forget_after_s: float) -> None:
        self.forget_after_s = forget_after_s
        self._open: dict[str, OpenTail] = {}
        self._sweep_at = 1024

    def __len__(self) -> int:
        return len(self._open)

    def opened(self, generation_id: str, channel: bytes, started: bytes) -> None:
        self._open[generation_id] = OpenTail(channel, started)
        if len(self._open) > self._sweep_at:
            cutoff = time.monotonic() - self.forget_after_s
            self._open = {gid: t for gid, t in self._open.items() if t.opened_at > cutoff}
            self._sweep_at = max(1024, 2 * len(self._open))

    def extended(self, delta: GenerationDelta) -> None:
        tail = self._open.get(delta.generation_id)
        if tail is not None:
            tail.extend(delta)

    def closed(self, generation_id: str) -> None:
        self._open.pop(generation_id, None)

    def get(self, generation_id: str) -> OpenTail | None:
        return self._open.get(generation_id)

    def ids(self) -> list[str]:
        return list(self._open)

    def clear(self) -> None:
        self._open.clear()
