"""A node killed mid-reply (SIGKILL: no drain, no goodbye). Its reply's lease lapses and
another node ends it: stored ``interrupted`` with the text checkpointed so far, and
every follower -- on any node -- hears ``generation.failed`` with code ``interrupted``.
"""

from __future__ import annotations

import time

import pytest

from tests.cluster.support import LEASE_S, Cluster, kill, report
from tests.server import RunningServer
from tests.transports.support import Reassembly, http_client, new_conversation, ws_client

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


async def test_a_reply_of_a_killed_node_is_reported_interrupted_by_another_within_the_lease(
    shared: Cluster, node_b: RunningServer
) -> None:
    with shared.node("node-doomed") as doomed:
        async with http_client(doomed) as http:
            conversation_id = await new_conversation(http)
        async with ws_client(node_b) as watcher, ws_client(doomed) as author:
            await watcher.send(type="conversation.subscribe", conversation_id=conversation_id)
            await watcher.send(type="ping")
            await watcher.recv_type("pong")
            accepted = await author.create(
                "this will not end well", conversation_id=conversation_id, model="long"
            )
            generation_id = accepted["generation_id"]
            streamed = Reassembly(generation_id)
            while streamed.end < 40 or shared.stored(generation_id)["content"] == "":
                streamed.add(await watcher.recv())  # some text, and a checkpoint of it
            kill(doomed)
            killed = time.monotonic()
            end = await watcher.until_terminal(generation_id, timeout=4 * LEASE_S + 10)
            detected = time.monotonic() - killed
    report(f"crash detection (lease {LEASE_S:.0f} s): SIGKILL to generation.failed", detected)
    assert end["type"] == "generation.failed"
    assert end["error"]["code"] == "interrupted"
    kept = end["message"]["content"]
    assert end["message"]["status"] == "interrupted"
    assert kept and streamed.text.startswith(kept)  # the checkpointed prefix of what streamed
    stored = shared.stored(generation_id)
    assert (stored["status"], stored["content"], stored["error_code"]) == (
        "interrupted",
        kept,
        "interrupted",
    )
    # a lease lapses at most lease_s after its last renewal, and B sweeps every lease_s / 3
    assert detected < 4 * LEASE_S / 3 + 5

    # the tab that was on the dead node reconnects to B and resumes: it learns the end
    async with ws_client(node_b) as returning:
        await returning.send(
            type="generation.resume", generation_id=generation_id, offset=streamed.end
        )
        resumed = await returning.until_terminal(generation_id, timeout=10.0)
    assert resumed["type"] == "generation.failed"
    assert resumed["error"]["code"] == "interrupted"
    assert resumed["message"]["content"] == kept
