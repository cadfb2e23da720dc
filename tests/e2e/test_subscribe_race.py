"""Many fresh WebSockets join a fast reply mid-stream with
``conversation.subscribe`` + ``generation_id`` + ``offset``, against a real
server on SQLite and PostgreSQL (issue 17, item 6).

Each must see the contract of docs/protocol.md (Order and delivery 3 and 5):
``generation.started`` first, deltas contiguous from the offset it asked
for, one terminal event, never the same text twice; and what it had plus
what it received is the stored reply. The reply streams fast, so live
deltas keep coming while each resume reads the database and the live tail.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from typing import Any

import pytest

from tests.server import RunningServer
from tests.transports.support import (
    BACKENDS,
    TERMINAL,
    Reassembly,
    http_client,
    server_on,
    stored_message,
    ws_client,
)

#: about 4 s of reply at 500 words a second: time for every subscriber to join mid-reply
MODELS_TOML = """
default = "fast"
[models.fast]
provider = "demo"
ttft_ms = 0
tokens_per_second = 500
reply_tokens = 2000
"""

#: fresh connections joining one reply
SUBSCRIBERS = 40


@pytest.fixture(scope="module", params=BACKENDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("race")
    with server_on(request.param, tmp, models=MODELS_TOML) as running:
        yield running


def violations(frames: list[dict[str, Any]], generation_id: str, offset: int) -> list[str]:
    """What in one connection's frames of a reply breaks the contract, for a
    client that had ``offset`` code points of it."""
    events = [f for f in frames if f.get("generation_id") == generation_id]
    events = [f for f in events if f["type"] != "message.accepted"]
    kinds = [f"{f['type']}@{f.get('offset', '')}" for f in events[:4]]
    found = []
    if not events or events[0]["type"] != "generation.started":
        found.append(f"did not start with generation.started: {kinds}")
    if sum(f["type"] == "generation.started" for f in events) != 1:
        found.append("generation.started not exactly once")
    if sum(f["type"] in TERMINAL for f in events) != 1 or events[-1]["type"] not in TERMINAL:
        found.append("not exactly one terminal event, last")
    end = offset
    for event in events:
        if event["type"] == "generation.delta":
            if event["offset"] != end:
                what = "overlap (text twice)" if event["offset"] < end else "gap"
                found.append(f"{what}: delta at {event['offset']}, expected {end}: {kinds}")
                break
            end += len(event["text"])
    return found


async def test_fresh_subscribers_with_an_offset_get_started_first_then_the_rest_exactly_once(
    server: RunningServer,
) -> None:
    rng = random.Random(17)
    async with ws_client(server) as sender:
        accepted = await sender.create("race me")
        generation_id = accepted["generation_id"]
        conversation_id = accepted["conversation_id"]
        have = Reassembly(generation_id)
        while have.end < 200:
            have.add(await sender.recv())

        async def subscriber(prefix: str) -> tuple[str, list[str]]:
            """Join with ``prefix`` of the reply; the text it ends with, and what broke."""
            async with ws_client(server) as tab:
                await tab.send(
                    type="conversation.subscribe",
                    conversation_id=conversation_id,
                    generation_id=generation_id,
                    offset=len(prefix),
                )
                await tab.until_terminal(generation_id)
                text = Reassembly(generation_id, len(prefix), prefix)
                found = violations(tab.received, generation_id, len(prefix))
                if not found:
                    text.add_all(tab.received)
                return text.text, found

        joins = []
        for _ in range(SUBSCRIBERS):
            # what the sender has now, received live: a prefix a real client could hold
            for _ in range(rng.randint(1, 8)):
                have.add(await sender.recv())
            length = have.end if rng.random() < 0.5 else rng.randint(0, have.end)
            joins.append(asyncio.create_task(subscriber(have.text[:length])))
        terminal = await sender.until_terminal(generation_id)
        results = await asyncio.gather(*joins)

    assert terminal["type"] == "generation.completed"
    broken = [found for _, found in results if found]
    assert not broken, f"{len(broken)}/{SUBSCRIBERS} subscribers broke the contract: {broken[:3]}"
    async with http_client(server) as client:
        stored = await stored_message(client, conversation_id, generation_id)
    assert stored["status"] == "complete"
    assert stored["content"] == terminal["message"]["content"]
    for text, _ in results:
        assert text == stored["content"]
