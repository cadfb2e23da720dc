"""The SSE transport over real sockets, on SQLite and PostgreSQL: the POST that
answers after commit, the event streams, Last-Event-ID, heartbeats, cancel,
and that a client going away frees its stream."""

from __future__ import annotations

import asyncio
import uuid

from tests.server import RunningServer

from .support import (
    TERMINAL,
    Reassembly,
    http_client,
    new_conversation,
    post_message,
    sse_stream,
    stored_message,
    wait_connections,
    wait_stored_final,
    ws_client,
)


async def test_a_reply_streams_as_sse_events_with_the_websocket_json(
    server: RunningServer,
) -> None:
    async with http_client(server) as client, ws_client(server) as ws:
        conversation_id = await new_conversation(client)
        await ws.send(type="conversation.subscribe", conversation_id=conversation_id)
        # frames are handled in order: the pong means the subscription is live
        await ws.send(type="ping")
        assert (await ws.recv()) == {"type": "pong"}
        async with sse_stream(client, f"/api/v1/conversations/{conversation_id}/events") as sse:
            headers = sse.response.headers
            assert headers["content-type"].startswith("text/event-stream")
            assert headers["cache-control"] == "no-cache"
            assert headers["x-accel-buffering"] == "no"
            posted = await post_message(client, conversation_id, "tell me about rivers")
            assert posted.status_code == 202, posted.text
            generation_id = posted.json()["generation_id"]
            terminal = await sse.until_terminal(generation_id)
        ws_terminal = await ws.until_terminal(generation_id)

    events = [e for e in sse.received if e.data is not None]
    assert [e.data["type"] for e in events][:2] == ["message.accepted", "generation.started"]
    text = Reassembly(generation_id)
    for event in events:
        assert event.data is not None
        assert event.event == event.data["type"]
        text.add(event.data)
        if event.data["type"] == "generation.delta":
            assert event.id == f"{generation_id}:{text.end}"
        elif event.data["type"] in ("generation.started", *TERMINAL):
            end = 0 if event.data["type"] == "generation.started" else text.end
            assert event.id == f"{generation_id}:{end}"
        else:
            assert event.id is None
    assert terminal["type"] == "generation.completed"
    assert terminal["message"]["content"] == text.text != ""
    accepted = events[0].data
    assert accepted is not None and accepted["generation_id"] == generation_id
    # the same JSON objects on both transports (deltas may be cut differently)
    ws_by_type = {e["type"]: e for e in ws.received if e["type"] != "generation.delta"}
    for event in events:
        assert event.data is not None
        if event.data["type"] != "generation.delta":
            assert ws_by_type[event.data["type"]] == event.data
    ws_text = Reassembly(generation_id).add_all(ws.received)
    assert ws_text.text == text.text
    assert ws_terminal == terminal


async def test_post_answers_202_after_commit_and_is_idempotent_on_client_id(
    server: RunningServer,
) -> None:
    async with http_client(server) as client:
        conversation_id = await new_conversation(client)
        client_id = str(uuid.uuid4())
        first = await post_message(client, conversation_id, "once only", client_id=client_id)
        assert first.status_code == 202, first.text
        body = first.json()
        assert body["message"]["role"] == "user" and body["message"]["content"] == "once only"
        assert body["message"]["client_id"] == client_id
        # committed before the answer: it is already in the history
        stored = await stored_message(client, conversation_id, body["message"]["id"])
        assert stored["content"] == "once only"
        again = await post_message(client, conversation_id, "once only", client_id=client_id)
        assert again.status_code == 202, again.text
        assert again.json()["message"]["id"] == body["message"]["id"]
        assert again.json()["generation_id"] == body["generation_id"]
        reply = await wait_stored_final(client, conversation_id, body["generation_id"])
        assert reply["status"] == "complete"
        history = await client.get(f"/api/v1/conversations/{conversation_id}/messages")
        assert [m["role"] for m in history.json()["items"]] == ["user", "assistant"]


async def test_a_second_post_while_a_reply_runs_is_a_409_conflict(server: RunningServer) -> None:
    async with http_client(server) as client:
        conversation_id = await new_conversation(client)
        first = await post_message(client, conversation_id, model="slow")
        assert first.status_code == 202
        second = await post_message(client, conversation_id, "me too")
        assert second.status_code == 409
        assert second.json()["error"]["code"] == "conflict"
        cancel = await client.post(f"/api/v1/generations/{first.json()['generation_id']}/cancel")
        assert cancel.status_code == 202


async def test_missing_conversation_or_generation_answers_404(server: RunningServer) -> None:
    missing = str(uuid.uuid4())
    async with http_client(server) as client:
        posted = await post_message(client, missing)
        assert posted.status_code == 404 and posted.json()["error"]["code"] == "not_found"
        for path in (
            f"/api/v1/conversations/{missing}/events",
            f"/api/v1/generations/{missing}/events",
        ):
            response = await client.get(path)
            assert response.status_code == 404, path
            assert response.json()["error"]["code"] == "not_found"
        cancel = await client.post(f"/api/v1/generations/{missing}/cancel")
        assert cancel.status_code == 404


async def test_bad_input_answers_a_validation_error(server: RunningServer) -> None:
    async with http_client(server) as client:
        conversation_id = await new_conversation(client)
        empty = await post_message(client, conversation_id, "  ")
        assert empty.status_code == 422 and empty.json()["error"]["code"] == "validation_error"
        not_json = await client.post(
            f"/api/v1/conversations/{conversation_id}/messages", content=b"{nope"
        )
        assert not_json.status_code == 400 and not_json.json()["error"]["code"] == "bad_request"
        for headers in ({"Last-Event-ID": "garbage"}, {"Last-Event-ID": f"{uuid.uuid4()}:-1"}):
            response = await client.get(
                f"/api/v1/conversations/{conversation_id}/events", headers=headers
            )
            assert response.status_code == 422, headers
        negative = await client.get(f"/api/v1/generations/{uuid.uuid4()}/events?offset=x")
        assert negative.status_code == 422


async def test_an_idle_stream_sends_heartbeat_comments(server: RunningServer) -> None:
    # the test server beats every 0.5 s (SANIC_CHAT_HEARTBEAT_S)
    async with http_client(server) as client:
        conversation_id = await new_conversation(client)
        async with sse_stream(client, f"/api/v1/conversations/{conversation_id}/events") as sse:
            comments = []
            while len(comments) < 3:
                event = await sse.next(timeout=5.0)
                assert event is not None and event.data is None
                comments.append(event.comment)
    assert comments == ["connected", "heartbeat", "heartbeat"]


async def test_generation_stream_replays_from_offset_and_ends_after_the_terminal_event(
    server: RunningServer,
) -> None:
    async with http_client(server) as client:
        conversation_id = await new_conversation(client)
        posted = (await post_message(client, conversation_id)).json()
        generation_id = posted["generation_id"]
        reply = await wait_stored_final(client, conversation_id, generation_id)
        content = reply["content"]
        path = f"/api/v1/generations/{generation_id}/events"
        for query, headers, offset in (
            ("?offset=5", {}, 5),
            ("", {"Last-Event-ID": f"{generation_id}:7"}, 7),
            (f"?last_event_id={generation_id}:9", {}, 9),
            # a reconnect's header wins over the first connection's query
            ("?offset=2", {"Last-Event-ID": f"{generation_id}:11"}, 11),
        ):
            async with sse_stream(client, path + query, headers) as sse:
                events = await sse.all_data()
            assert [e["type"] for e in events] == [
                "generation.started",
                "generation.delta",
                "generation.completed",
            ], query
            text = Reassembly(generation_id, offset).add_all(events)
            assert text.text == content[offset:]
            assert sse.last_id == f"{generation_id}:{len(content)}"
        past_the_end = await client.get(f"{path}?offset={len(content) + 1}")
        assert past_the_end.status_code == 422


async def test_last_event_id_resumes_the_conversation_stream_exactly(
    server: RunningServer,
) -> None:
    async with http_client(server) as client:
        conversation_id = await new_conversation(client)
        path = f"/api/v1/conversations/{conversation_id}/events"
        async with sse_stream(client, path) as sse:
            posted = await post_message(client, conversation_id, "a long one", model="slow")
            generation_id = posted.json()["generation_id"]
            text = await Reassembly(generation_id).read(sse.next_data, 5)
            last_id = sse.last_id
        # the stream is gone mid-reply; the reply goes on
        assert last_id == f"{generation_id}:{text.end}"
        await asyncio.sleep(0.5)
        async with sse_stream(client, path, {"Last-Event-ID": last_id}) as sse:
            first = await sse.next_data()
            assert first is not None and first["type"] == "generation.started"
            terminal = await sse.until_terminal(generation_id)
            text.add_all(sse.received_data)
            assert terminal["type"] == "generation.completed"
            assert text.text == terminal["message"]["content"]
            end_of_first = sse.last_id

        # disconnected between two replies: the next one is caught up on resume
        assert end_of_first == f"{generation_id}:{len(text.text)}"
        second = (await post_message(client, conversation_id, "and another")).json()
        await wait_stored_final(client, conversation_id, second["generation_id"])
        async with sse_stream(client, f"{path}?last_event_id={end_of_first}") as sse:
            terminal = await sse.until_terminal(second["generation_id"])
        replayed = sse.received_data
        kinds = [(e["type"], e.get("generation_id")) for e in replayed]
        assert kinds[:2] == [
            ("generation.started", generation_id),
            ("generation.completed", generation_id),
        ]
        assert kinds[2] == ("message.accepted", second["generation_id"])
        assert replayed[2]["message"]["id"] == second["message"]["id"]
        second_text = Reassembly(second["generation_id"]).add_all(replayed)
        assert second_text.text == terminal["message"]["content"] != ""


async def test_a_client_going_away_frees_its_stream_and_not_the_reply(
    server: RunningServer,
) -> None:
    async with http_client(server) as client:
        conversation_id = await new_conversation(client)
        posted = (await post_message(client, conversation_id, model="slow")).json()
        generation_id = posted["generation_id"]
        paths = [
            f"/api/v1/conversations/{conversation_id}/events",
            f"/api/v1/generations/{generation_id}/events",
            f"/api/v1/generations/{generation_id}/events?offset=0",
        ]
        async with (
            sse_stream(client, paths[0]) as a,
            sse_stream(client, paths[1]) as b,
            sse_stream(client, paths[2]) as c,
        ):
            for stream in (a, b, c):
                assert await stream.next_data() is not None
            assert await wait_connections(client, "sse", 3) == 3
        # the three clients closed their sockets mid-reply
        assert await wait_connections(client, "sse", 0) == 0
        reply = await stored_message(client, conversation_id, generation_id)
        assert reply["status"] == "streaming"
        cancel = await client.post(f"/api/v1/generations/{generation_id}/cancel")
        assert cancel.status_code == 202
        reply = await wait_stored_final(client, conversation_id, generation_id)
        assert reply["status"] == "cancelled"
        # cancelling what already ended is not an error
        again = await client.post(f"/api/v1/generations/{generation_id}/cancel")
        assert again.status_code == 202 and again.json()["status"] == "cancelled"
