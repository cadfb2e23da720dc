"""Zero-loss resume across transports, live multi-tab, and Stop versus
disconnect, against a real server on SQLite and PostgreSQL.

Connections are cut at the TCP level with no WebSocket close frame and no
end of the SSE response. Resume latency (the resume request sent to its first
delta received) is measured and printed, not asserted.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.server import RunningServer
from tests.transports.support import (
    BACKENDS,
    Reassembly,
    http_client,
    new_conversation,
    post_message,
    shared_server,
    sse_stream,
    stored_message,
    wait_stored_final,
    ws_client,
)


@pytest.fixture(scope="module", params=BACKENDS)
def server(request: pytest.FixtureRequest) -> RunningServer:
    return shared_server(request, request.param)


def report(name: str, seconds: float) -> None:
    print(f"\n[measure] {name}: {seconds * 1000:.1f} ms")


async def test_a_websocket_cut_mid_reply_is_finished_over_sse_from_its_offset(
    server: RunningServer,
) -> None:
    async with http_client(server) as client:
        async with ws_client(server) as ws:
            accepted = await ws.create("cut me off", model="slow")
            generation_id = accepted["generation_id"]
            text = await Reassembly(generation_id).read(ws.recv, 5)
            ws.cut()
        await asyncio.sleep(0.3)  # the reply goes on meanwhile
        asked = time.monotonic()
        path = f"/api/v1/generations/{generation_id}/events?offset={text.end}"
        async with sse_stream(client, path) as sse:
            assert (await sse.next_data()) == {
                "type": "generation.started",
                "generation_id": generation_id,
                "conversation_id": accepted["conversation_id"],
                "message_id": generation_id,
                "reply_to": accepted["message"]["id"],
                "model": "slow",
            }
            first = await sse.next_data()
            report("resume latency, WebSocket cut -> SSE ?offset=", time.monotonic() - asked)
            assert first is not None and first["type"] == "generation.delta"
            assert first["offset"] == text.end
            text.add(first)
            while (data := await sse.next_data()) is not None:
                text.add(data)
                last = data
        assert last["type"] == "generation.completed"
        assert text.text == last["message"]["content"]
        stored = await stored_message(client, accepted["conversation_id"], generation_id)
        assert stored["status"] == "complete" and stored["content"] == text.text


async def test_an_sse_stream_cut_mid_reply_is_finished_over_websocket_resume(
    server: RunningServer,
) -> None:
    async with http_client(server) as client:
        conversation_id = await new_conversation(client)
        path = f"/api/v1/conversations/{conversation_id}/events"
        async with sse_stream(client, path) as sse:
            posted = (await post_message(client, conversation_id, "drop me", model="slow")).json()
            generation_id = posted["generation_id"]
            text = await Reassembly(generation_id).read(sse.next_data, 5)
        # leaving the block closed the socket mid-stream
        await asyncio.sleep(0.3)
        async with ws_client(server) as ws:
            asked = time.monotonic()
            await ws.send(type="generation.resume", generation_id=generation_id, offset=text.end)
            started = await ws.recv()
            first = await ws.recv()
            report(
                "resume latency, SSE cut -> WebSocket generation.resume", time.monotonic() - asked
            )
            assert started["type"] == "generation.started"
            assert first["type"] == "generation.delta" and first["offset"] == text.end
            text.add(first)
            terminal = await ws.until_terminal(generation_id)
            text.add_all(ws.received[2:])
        assert terminal["type"] == "generation.completed"
        assert text.text == terminal["message"]["content"]
        stored = await stored_message(client, conversation_id, generation_id)
        assert stored["status"] == "complete" and stored["content"] == text.text


async def test_stop_from_the_tab_that_did_not_send_ends_the_reply_for_every_tab(
    server: RunningServer,
) -> None:
    async with http_client(server) as client, ws_client(server) as sender:
        conversation_id = await new_conversation(client)
        path = f"/api/v1/conversations/{conversation_id}/events"
        async with sse_stream(client, path) as other_tab, ws_client(server) as third_tab:
            await third_tab.send(type="conversation.subscribe", conversation_id=conversation_id)
            await third_tab.send(type="ping")
            assert (await third_tab.recv()) == {"type": "pong"}
            accepted = await sender.create("stop me", model="slow", conversation_id=conversation_id)
            generation_id = accepted["generation_id"]
            seen = await Reassembly(generation_id).read(other_tab.next_data, 3)
            stop = await client.post(f"/api/v1/generations/{generation_id}/cancel")
            assert stop.status_code == 202
            ends = [
                await sender.until_terminal(generation_id),
                await other_tab.until_terminal(generation_id),
                await third_tab.until_terminal(generation_id),
            ]
        texts = []
        for events in (
            sender.received,
            other_tab.received_data,
            third_tab.received,
        ):
            text = Reassembly(generation_id).add_all(events)
            texts.append(text.text)
        assert [end["type"] for end in ends] == ["generation.cancelled"] * 3
        assert ends[0] == ends[1] == ends[2]
        cancelled = ends[0]["message"]
        assert cancelled["status"] == "cancelled"
        # every tab saw exactly the text that was stored, no more, no less
        assert texts[0] == texts[1] == cancelled["content"]
        assert cancelled["content"].startswith(seen.text)
        # the third tab joined before the reply started: it saw all of it too
        assert texts[2] == cancelled["content"]
        stored = await stored_message(client, conversation_id, generation_id)
        assert stored["status"] == "cancelled" and stored["content"] == cancelled["content"]
        assert len(stored["content"].split()) < 100  # it stopped before its last token


async def test_a_finished_reply_resumes_from_the_database_once_its_tail_expired(
    server: RunningServer,
) -> None:
    # the test server keeps a finished reply's live tail 1 s (SANIC_CHAT_TAIL_TTL_S)
    async with http_client(server) as client:
        async with ws_client(server) as ws:
            accepted = await ws.create("remember this")
            generation_id = accepted["generation_id"]
            terminal = await ws.until_terminal(generation_id)
        content = terminal["message"]["content"]
        await asyncio.sleep(1.5)
        offset = len(content) // 2
        asked = time.monotonic()
        async with sse_stream(
            client, f"/api/v1/generations/{generation_id}/events?offset={offset}"
        ) as sse:
            events = []
            while (data := await sse.next_data()) is not None:
                if data["type"] == "generation.delta":
                    report(
                        "resume latency, finished reply from the database", time.monotonic() - asked
                    )
                events.append(data)
        assert [e["type"] for e in events] == [
            "generation.started",
            "generation.delta",
            "generation.completed",
        ]
        assert events[1]["offset"] == offset and events[1]["text"] == content[offset:]
        assert events[2] == terminal
        async with ws_client(server) as ws:
            await ws.send(type="generation.resume", generation_id=generation_id, offset=0)
            replay = [await ws.recv() for _ in range(3)]
        assert replay[1] == {
            "type": "generation.delta",
            "generation_id": generation_id,
            "offset": 0,
            "text": content,
        }
        assert replay[2] == terminal


async def test_a_disconnect_never_stops_a_reply(server: RunningServer) -> None:
    async with http_client(server) as client:
        conversation_id = await new_conversation(client)
        async with ws_client(server) as ws:
            accepted = await ws.create(
                "nobody is listening", model="slow", conversation_id=conversation_id
            )
            await ws.recv_type("generation.delta")
            ws.cut()
        async with sse_stream(client, f"/api/v1/conversations/{conversation_id}/events") as sse:
            assert await sse.next_data() is not None
        # every client is gone; the reply still runs to its end and is stored
        stored = await wait_stored_final(client, conversation_id, accepted["generation_id"])
        assert stored["status"] == "complete"
        assert stored["usage"]["output_tokens"] == 100
