"""Upstream server-sent events, decoded a network read at a time.

Contained infrastructure (architecture rule 7): this replaces httpx-sse's
``EventSource.aiter_sse``, which passes each *line* through three async
generators (text, lines, events). A streamed reply is a few lines per token,
so that was a measurable share of the server's CPU per reply.

* Works around: httpx-sse's per-line async-generator layering (its design, not
  a bug; no upstream issue asks for a read-at-a-time decoder).
* Justified by: ``python -m benchmarks.upstream_cost --streams 200 --tokens 100
  --tps 50 --repeat 3 --shared``, the "upstream reads" row of the second pass in
  ``benchmarks/RESULTS.md`` (together with http11.py and pool.py).
* Delete when: a maintained SSE decoder for httpx decodes a read at a time and,
  swapped in here, is within 5 % of this one's client CPU per chunk on that
  benchmark. Its interpretation is kept identical to httpx-sse's:
  tests/providers/test_event_stream.py compares the two on generated streams
  (httpx-sse is a test-only dependency for that).

It is used by both upstream HTTP stacks (see :mod:`.upstream`): it reads the
bytes httpx hands over, whatever transport carried them. The rules:

* lines end at ``\\r\\n``, ``\\n`` or ``\\r``, also when split across reads;
* a blank line dispatches the event if any field was set since the last one
  (``data`` lines joined by ``\\n``; the last ``id`` carries over, as the spec says);
* an event without an ``event`` field is named ``message`` (as the spec says);
* ``:`` starts a comment; ``field: value`` loses one leading space; unknown
  fields are ignored; an unterminated last event is dropped at the end;
* bytes are UTF-8, invalid sequences replaced (as httpx's text decoding does).
"""

from __future__ import annotations

import codecs
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import httpx

__all__ = [
    "EventStreamDecoder",
    "NotAnEventStream",
    "ServerSentEvent",
    "check_event_stream",
    "server_sent_events",
]


@dataclass(slots=True)
class ServerSentEvent:
    """One dispatched event (not frozen: a frozen dataclass costs more per event)."""

    event: str = "message"
    data: str = ""
    id: str = ""
    retry: int | None = None


class NotAnEventStream(Exception):
    """The response's content type is not ``text/event-stream``."""


class EventStreamDecoder:
    """Bytes in, complete events out; see the module's rules."""

    __slots__ = ("_data", "_event", "_id", "_partial", "_retry", "_text")

    def __init__(self) -> None:
        self._text = codecs.getincrementaldecoder("utf-8")("replace")
        self._partial = ""  # the unterminated last line (with a trailing "\r" kept)
        self._event = ""
        self._data: list[str] = []
        self._id = ""
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        return self._lines(self._partial + self._text.decode(chunk), final=False)

    def end(self) -> list[ServerSentEvent]:
        """The body ended: its last line counts even without a line break."""
        return self._lines(self._partial + self._text.decode(b"", final=True), final=True)

    def _lines(self, text: str, *, final: bool) -> list[ServerSentEvent]:
        hold = ""
        if not final and text.endswith("\r"):
            # maybe the first half of "\r\n": decide with the next read
            text, hold = text[:-1], "\r"
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        lines = text.split("\n")
        last = lines.pop()  # unterminated ("" when the text ended with a line break)
        if final:
            self._partial = ""
            if last:
                lines.append(last)
        else:
            self._partial = last + hold
        events: list[ServerSentEvent] = []
        for line in lines:
            if not line:
                if self._event or self._data or self._id or self._retry is not None:
                    events.append(
                        ServerSentEvent(
                            event=self._event or "message",
                            data="\n".join(self._data),
                            id=self._id,
                            retry=self._retry,
                        )
                    )
                    self._event = ""
                    self._data = []
                    self._retry = None
                continue
            if line[0] == ":":
                continue
            field, _, value = line.partition(":")
            if value[:1] == " ":
                value = value[1:]
            if field == "data":
                self._data.append(value)
            elif field == "event":
                self._event = value
            elif field == "id":
                if "\0" not in value:
                    self._id = value
            elif field == "retry":
                try:
                    self._retry = int(value)
                except ValueError:
                    pass
        return events


def check_event_stream(response: httpx.Response) -> None:
    """Raise :class:`NotAnEventStream` unless the response says it is an event stream."""
    content_type = response.headers.get("content-type", "").partition(";")[0]
    if "text/event-stream" not in content_type:
        raise NotAnEventStream(
            f"Expected response header Content-Type to contain 'text/event-stream', "
            f"got {content_type!r}"
        )


async def server_sent_events(response: httpx.Response) -> AsyncGenerator[ServerSentEvent, None]:
    """The response's events, a read's worth at a time."""
    check_event_stream(response)
    decoder = EventStreamDecoder()
    # without a content coding the raw bytes are the bytes: skip a layer per read
    coded = response.headers.get("content-encoding", "identity").lower() not in ("", "identity")
    async for chunk in response.aiter_bytes() if coded else response.aiter_raw():
        for event in decoder.feed(chunk):
            yield event
    for event in decoder.end():
        yield event
