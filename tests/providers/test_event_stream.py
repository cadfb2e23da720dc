"""The read-at-a-time SSE decoder against httpx-sse's own, on generated streams
split at arbitrary points, and on the streams vendors actually send.

httpx-sse is a test-only dependency (the ``test`` extra): an independent
decoder to compare with is the strongest check of our interpretation, and
sanic_chat itself no longer imports it."""

from __future__ import annotations

import asyncio

import httpx
import httpx_sse
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sanic_chat.providers.event_stream import (
    EventStreamDecoder,
    NotAnEventStream,
    check_event_stream,
    server_sent_events,
)

Event = tuple[str, str, str, int | None]


def reference(body: bytes) -> list[Event]:
    """What httpx-sse makes of ``body``."""

    async def collect() -> list[Event]:
        response = httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)
        return [
            (e.event, e.data, e.id, e.retry)
            async for e in httpx_sse.EventSource(response).aiter_sse()
        ]

    return asyncio.run(collect())


def ours(body: bytes, cuts: list[int]) -> list[Event]:
    decoder = EventStreamDecoder()
    events = []
    start = 0
    for cut in [*sorted(set(cuts)), len(body)]:
        events += decoder.feed(body[start:cut])
        start = cut
    events += decoder.end()
    return [(e.event, e.data, e.id, e.retry) for e in events]


_LINE = st.one_of(
    st.sampled_from(["", ":comment", ": keep-alive", "data", "data:", "event:x", "retry: 7"]),
    st.builds(lambda v: f"data: {v}", st.text(max_size=12)),
    st.builds(lambda v: f"data:{v}", st.text(alphabet="ab \t:é€😀\0", max_size=6)),
    st.builds(lambda v: f"event: {v}", st.sampled_from(["message", "content_block_delta", ""])),
    st.builds(lambda v: f"id: {v}", st.sampled_from(["1", "a\0b", "", "42"])),
    st.builds(lambda v: f"retry:{v}", st.sampled_from(["10", "x", " 5", "-1"])),
    st.builds(
        lambda f, v: f"{f}:{v}", st.sampled_from(["foo", "Data", "dat"]), st.text(max_size=4)
    ),
)
_BREAK = st.sampled_from(["\n", "\r\n", "\r"])


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    lines = draw(st.lists(st.tuples(_LINE, _BREAK), max_size=25))
    text = "".join(line + brk for line, brk in lines)
    if draw(st.booleans()):
        text += draw(_LINE)  # an unterminated last line
    body = text.encode()
    if draw(st.booleans()) and body:
        # invalid UTF-8 somewhere: both replace it
        at = draw(st.integers(0, len(body)))
        body = body[:at] + b"\xff" + body[at:]
    cuts = draw(st.lists(st.integers(0, len(body)), max_size=12))
    return body, cuts


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_any_stream_split_anywhere_decodes_as_httpx_sse_does(case: tuple[bytes, list[int]]) -> None:
    body, cuts = case
    assert ours(body, cuts) == reference(body)


OPENAI = (
    b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n'
    b'data: {"choices":[{"delta":{"content":"lo"}}]}\n\n'
    b"data: [DONE]\n\n"
)
ANTHROPIC = (
    b'event: message_start\r\ndata: {"type":"message_start"}\r\n\r\n'
    b'event: ping\r\ndata: {"type": "ping"}\r\n\r\n'
    b'event: content_block_delta\r\ndata: {"delta":{"text":"h\xc3\xa9"}}\r\n\r\n'
)


@pytest.mark.parametrize("body", [OPENAI, ANTHROPIC], ids=["openai", "anthropic"])
def test_vendor_streams_split_at_every_byte(body: bytes) -> None:
    expected = reference(body)
    assert expected  # the fixture means something
    for cut in range(len(body) + 1):
        assert ours(body, [cut]) == expected
    assert ours(body, list(range(len(body)))) == expected  # one byte per read


def test_a_multi_byte_character_split_between_reads_is_kept_whole() -> None:
    body = "data: é😀\n\n".encode()
    assert ours(body, [7, 9, 10]) == reference(body)
    assert [data for _, data, _, _ in ours(body, [7, 9, 10])] == ["é😀"]


def test_a_response_that_is_not_an_event_stream_is_refused() -> None:
    with pytest.raises(NotAnEventStream):
        check_event_stream(httpx.Response(200, headers={"content-type": "application/json"}))
    check_event_stream(
        httpx.Response(200, headers={"content-type": "text/event-stream; charset=utf-8"})
    )


@pytest.mark.parametrize("coding", [None, "gzip"])
async def test_server_sent_events_reads_raw_or_decoded_bodies(coding: str | None) -> None:
    import gzip

    headers = {"content-type": "text/event-stream"}
    body = OPENAI
    if coding:
        headers["content-encoding"] = coding
        body = gzip.compress(body)
    response = httpx.Response(200, headers=headers, stream=httpx.ByteStream(body))
    events = [e.data async for e in server_sent_events(response)]
    assert events[-1] == "[DONE]" and len(events) == 3
