"""The WebSocket transport over real sockets, on SQLite and PostgreSQL:
``conversation.subscribe`` (with and without a resume point),
``generation.resume``, refusals, and that a dropped socket frees everything
and stops nothing."""

from __future__ import annotations

import asyncio
import uuid

from tests.server import RunningServer

from .support import (
    Reassembly,
    http_client,
    wait_connections,
    wait_stored_final,
    ws_client,
)


async def test_a_subscriber_with_an_offset_gets_the_rest_then_the_live_reply(
    server: RunningServer,
) -> None:
    async with ws_client(server) as sender, ws_client(server) as tab:
        accepted = await sender.create("stream this", model="slow")
        generation_id = accepted["generation_id"]
        text = await Reassembly(generation_id).read(sender.recv, 4)
        have = text.end
        await tab.send(
            type="conversation.subscribe",
            conversation_id=accepted["conversation_id"],
            generation_id=generation_id,
            offset=have,
        )
        started = await tab.recv()
        assert started["type"] == "generation.started"
        assert started["generation_id"] == generation_id
        assert started["reply_to"] == accepted["message"]["id"]
        resumed = Reassembly(generation_id, have, text.text)
        terminal = await tab.until_terminal(generation_id)
        resumed.add_all(tab.received)
        assert resumed.text == terminal["message"]["content"]
        assert (await sender.until_terminal(generation_id)) == terminal
        # the subscription outlives that reply: the next message reaches the tab
        second = await sender.create("and again", conversation_id=accepted["conversation_id"])
        seen = await tab.recv_type("message.accepted")
        assert seen["message"]["id"] == second["message"]["id"]
        assert seen["generation_id"] == second["generation_id"]
        await tab.until_terminal(second["generation_id"])


async def test_resume_on_the_same_connection_may_go_back_to_the_start(
    server: RunningServer,
) -> None:
    async with ws_client(server) as ws:
        accepted = await ws.create("from the top", model="slow")
        generation_id = accepted["generation_id"]
        text = await Reassembly(generation_id).read(ws.recv, 3)
        # e.g. the view was rebuilt: everything again, from 0, then live
        await ws.send(type="generation.resume", generation_id=generation_id, offset=0)
        while (event := await ws.recv())["type"] != "generation.started":
            text.add(event)
        again = Reassembly(generation_id)
        while (event := await ws.recv())["type"] == "generation.delta":
            again.add(event)
        assert event["type"] == "generation.completed"
        assert again.text == event["message"]["content"]
        assert again.text.startswith(text.text)


async def test_resume_of_a_finished_reply_replays_it_and_refuses_an_offset_past_its_end(
    server: RunningServer,
) -> None:
    async with ws_client(server) as ws:
        accepted = await ws.create("short")
        generation_id = accepted["generation_id"]
        terminal = await ws.until_terminal(generation_id)
        content = terminal["message"]["content"]
        await ws.send(type="generation.resume", generation_id=generation_id, offset=3)
        replay = [await ws.recv() for _ in range(3)]
        assert [e["type"] for e in replay] == [
            "generation.started",
            "generation.delta",
            "generation.completed",
        ]
        assert replay[1]["offset"] == 3 and replay[1]["text"] == content[3:]
        await ws.send(
            type="generation.resume", generation_id=generation_id, offset=len(content) + 1
        )
        error = await ws.recv()
        assert error["type"] == "error" and error["code"] == "validation_error"
        assert error["ref"] == generation_id
        missing = str(uuid.uuid4())
        await ws.send(type="generation.resume", generation_id=missing, offset=0)
        error = await ws.recv()
        assert error == {
            "type": "error",
            "code": "not_found",
            "message": error["message"],
            "ref": missing,
        }
        # a generation of another conversation is not part of this one
        other = await ws.create("elsewhere")
        await ws.until_terminal(other["generation_id"])
        await ws.send(
            type="conversation.subscribe",
            conversation_id=other["conversation_id"],
            generation_id=generation_id,
            offset=0,
        )
        error = await ws.recv()
        assert error["type"] == "error" and error["code"] == "not_found"
        await ws.send(type="ping")
        assert await ws.recv() == {"type": "pong"}


async def test_a_dropped_socket_is_freed_and_its_reply_runs_to_the_end(
    server: RunningServer,
) -> None:
    async with http_client(server) as client:
        async with ws_client(server) as ws:
            accepted = await ws.create("keep going", model="slow")
            await ws.recv_type("generation.delta")
            assert await wait_connections(client, "websocket", 1) == 1
            ws.cut()  # TCP reset, no close frame
            await asyncio.sleep(0)
        assert await wait_connections(client, "websocket", 0) == 0
        reply = await wait_stored_final(
            client, accepted["conversation_id"], accepted["generation_id"]
        )
        assert reply["status"] == "complete"
        assert reply["usage"]["output_tokens"] == 100  # every token of the slow model
