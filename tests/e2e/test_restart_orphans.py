"""A process killed mid-reply (SIGKILL: no drain, no finalization) leaves its
reply ``streaming``; the restarted server marks it ``interrupted`` keeping the
checkpointed text, and anyone resuming it gets ``generation.failed`` with
error code ``interrupted``, over either transport.

When a restarted server may do that:
* SQLite with the in-memory bus is one process by construction: every
  ``streaming`` row at start-up is an orphan, recovered at once;
* on a shared database, a restarted node with a stable ``SANIC_CHAT_NODE_ID``
  recovers its own rows at once; other rows only once their lease lapsed.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.transports.support import (
    Reassembly,
    chat_server,
    database,
    http_client,
    sse_stream,
    stored_message,
    ws_client,
)

# (database, server settings, recovered as soon as the server is ready?)
CASES = [
    pytest.param("sqlite", {}, True, id="sqlite-sole-process"),
    pytest.param(
        "postgres",
        # the default 15 s lease is still running when it restarts
        {"SANIC_CHAT_NODE_ID": "restarting-node"},
        True,
        id="postgres-same-node-id",
        marks=pytest.mark.postgres,
    ),
    pytest.param(
        "postgres",
        {"SANIC_CHAT_LEASE_S": "1"},
        False,
        id="postgres-lapsed-lease",
        marks=pytest.mark.postgres,
    ),
]


@pytest.mark.parametrize(("backend", "env", "at_once"), CASES)
async def test_a_reply_orphaned_by_a_killed_process_is_interrupted_with_its_checkpointed_text(
    backend: str, env: dict[str, str], at_once: bool, tmp_path: Path
) -> None:
    with database(backend, tmp_path) as db:
        with chat_server(db, env) as first:
            async with ws_client(first) as ws:
                accepted = await ws.create("die halfway", model="slow")
                generation_id = accepted["generation_id"]
                conversation_id = accepted["conversation_id"]
                received = Reassembly(generation_id)
                streaming_since = time.monotonic()
                # several checkpoints (every 0.2 s here), not the whole reply (2.5 s)
                while time.monotonic() - streaming_since < 0.7:
                    received.add(await ws.recv())
                first.process.kill()
                first.process.wait(10)

        with chat_server(db, env) as second:
            async with http_client(second) as client:
                stored = await stored_message(client, conversation_id, generation_id)
                deadline = time.monotonic() + 10
                while (
                    not at_once and stored["status"] == "streaming" and time.monotonic() < deadline
                ):
                    await asyncio.sleep(0.1)  # the lapsed-lease case: the next sweep
                    stored = await stored_message(client, conversation_id, generation_id)
                assert stored["status"] == "interrupted"
                assert stored["error"]["code"] == "interrupted"
                kept = stored["content"]
                assert kept != ""
                # both are the start of the same reply: what was streamed and
                # what was checkpointed differ by at most the last interval
                assert received.text.startswith(kept) or kept.startswith(received.text)
                print(
                    f"\n[measure] {backend} {env}: streamed {len(received.text)} code points, "
                    f"checkpointed {len(kept)}"
                )

                had = received.end
                async with ws_client(second) as ws:
                    await ws.send(type="generation.resume", generation_id=generation_id, offset=had)
                    assert (await ws.recv())["type"] == "generation.started"
                    failed = await ws.until_terminal(generation_id)
                    received.add_all(ws.received)
                assert failed["type"] == "generation.failed"
                assert failed["error"]["code"] == "interrupted"
                assert failed["message"]["status"] == "interrupted"
                assert failed["message"]["content"] == kept
                if len(kept) >= had:  # checkpointed more than this client had read
                    assert received.text == kept

                path = f"/api/v1/generations/{generation_id}/events?offset=0"
                async with sse_stream(client, path) as sse:
                    events = await sse.all_data()
                assert [e["type"] for e in events] == [
                    "generation.started",
                    "generation.delta",
                    "generation.failed",
                ]
                assert events[1]["text"] == kept
                assert events[2] == failed

                # the conversation takes new messages again
                async with ws_client(second) as ws:
                    again = await ws.create("are you back?", conversation_id=conversation_id)
                    done = await ws.until_terminal(again["generation_id"])
                assert done["type"] == "generation.completed"
