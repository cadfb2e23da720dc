"""Two nodes on one PostgreSQL and one Redis: whatever one node streams, the other
delivers -- fan-out, resume by offset and Stop all cross nodes through the bus."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from tests.cluster.support import Cluster, report
from tests.server import RunningServer
from tests.transports.support import Reassembly, http_client, new_conversation, ws_client

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture(scope="module")
def node_a(shared: Cluster) -> Iterator[RunningServer]:
    with shared.node("node-a", args=("--access-log",)) as server:
        yield server


async def test_a_subscriber_on_node_b_receives_the_reply_streamed_on_node_a(
    shared: Cluster, node_a: RunningServer, node_b: RunningServer
) -> None:
    async with http_client(node_a) as http:
        conversation_id = await new_conversation(http)
    async with ws_client(node_b) as watcher, ws_client(node_a) as author:
        await watcher.send(type="conversation.subscribe", conversation_id=conversation_id)
        await watcher.send(type="ping")
        await watcher.recv_type("pong")  # the subscription is in place
        accepted = await author.create(
            "rivers and mountains", conversation_id=conversation_id, model="steady"
        )
        generation_id = accepted["generation_id"]
        end_on_a = await author.until_terminal(generation_id)

        seen = await watcher.recv_type("message.accepted")
        assert seen["message"]["id"] == accepted["message"]["id"]
        end_on_b = await watcher.until_terminal(generation_id)
    on_a = Reassembly(generation_id).add_all(author.received)
    on_b = Reassembly(generation_id).add_all(watcher.received)
    assert end_on_a["type"] == end_on_b["type"] == "generation.completed"
    assert on_b.text == on_a.text == end_on_b["message"]["content"]
    assert shared.stored(generation_id)["status"] == "complete"


async def test_a_reply_live_on_node_a_resumes_on_node_b_from_the_offset_without_gap_or_overlap(
    shared: Cluster, node_a: RunningServer, node_b: RunningServer
) -> None:
    async with ws_client(node_a) as first:
        accepted = await first.create("a long answer please", model="steady")
        generation_id = accepted["generation_id"]
        text = await Reassembly(generation_id).read(first.recv, deltas=5)
        first.cut()  # the tab drops mid-reply
    had = text.end
    async with ws_client(node_b) as second:
        asked = time.monotonic()
        await second.send(type="generation.resume", generation_id=generation_id, offset=had)
        assert (await second.recv())["type"] == "generation.started"
        rest = Reassembly(generation_id, had)
        first_delta = await second.recv()
        report("resume on another node: request to first delta", time.monotonic() - asked)
        rest.add(first_delta)
        end = await second.until_terminal(generation_id)
        rest.add_all(second.received[2:])
    assert end["type"] == "generation.completed"
    # resumed while it ran: B delivered live deltas after its snapshot
    assert rest.deltas >= 2
    assert text.text + rest.text == end["message"]["content"]
    assert shared.stored(generation_id)["content"] == end["message"]["content"]


async def test_stop_sent_to_node_b_stops_the_reply_running_on_node_a(
    shared: Cluster, node_a: RunningServer, node_b: RunningServer
) -> None:
    async with ws_client(node_a) as author, ws_client(node_b) as other_device:
        generation_id = await author.streaming("stop me from elsewhere", model="long")
        await other_device.send(type="generation.cancel", generation_id=generation_id)
        end = await author.until_terminal(generation_id, timeout=10.0)
    assert end["type"] == "generation.cancelled"
    assert shared.stored(generation_id)["status"] == "cancelled"


async def test_with_json_logs_every_line_is_one_json_object_tagged_with_its_request(
    node_a: RunningServer,
) -> None:
    async with http_client(node_a) as http:
        conversation_id = await new_conversation(http)
        secret = "t" * 40
        await http.get(f"/api/v1/conversations/{conversation_id}?ticket={secret}")
    lines = [line for line in node_a.log().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # fails on any line that is not JSON
    assert all({"ts", "level", "logger", "message"} <= set(r) for r in records)
    assert all(r["node_id"] == "node-a" for r in records)
    visits = [r for r in records if conversation_id in r.get("request", "")]
    assert visits, "the access log shows the request"
    assert all(r["request_id"] and r["connection_id"] for r in visits)
    assert secret not in node_a.log()
