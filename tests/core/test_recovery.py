"""Start-up recovery of replies a dead process left ``streaming``, driven with
the in-memory store and bus: when a restarted process may end them at once,
and when it must wait for their lease."""

from __future__ import annotations

from datetime import timedelta

import pytest

from sanic_chat.bus.memory import MemoryBus
from sanic_chat.core.records import utcnow
from sanic_chat.core.service import ChatService
from sanic_chat.store.memory import MemoryMessageStore
from tests.store.support import post, soon

from .fakes import ScriptedProvider, StaticModels


async def orphan(store: MemoryMessageStore, node_id: str) -> str:
    """A reply row as a process leaves it when killed mid-reply: streaming,
    with checkpointed text, its lease still running."""
    posted = await post(store, model="scripted", node_id=node_id, lease_until=soon(15))
    assert posted.reply is not None
    await store.checkpoint(posted.reply.id, "half a repl")
    return posted.reply.id


@pytest.mark.parametrize(
    ("sole_process", "node_id", "interrupted"),
    [
        (True, "new-node", True),  # SQLite + in-memory bus: nobody else can run it
        (False, "dead-node", True),  # the same node, restarted with a stable id
        (False, "new-node", False),  # another node may still be streaming it
    ],
)
async def test_a_restarted_process_ends_the_orphans_it_safely_can(
    sole_process: bool, node_id: str, interrupted: bool
) -> None:
    store = MemoryMessageStore()
    reply_id = await orphan(store, "dead-node")
    service = ChatService(
        store=store,
        bus=MemoryBus(),
        models=StaticModels(ScriptedProvider()),
        node_id=node_id,
        sole_process=sole_process,
    )
    await service.start()
    try:
        row = await store.get_message("alice", reply_id)
        assert row is not None
        if interrupted:
            assert row.status == "interrupted" and row.content == "half a repl"
            assert row.error is not None and row.error.code == "interrupted"
        else:
            assert row.status == "streaming"
            # once the lease lapsed, any node ends it
            await service.recover_orphans(now=utcnow() + timedelta(seconds=16))
            row = await store.get_message("alice", reply_id)
            assert row is not None and row.status == "interrupted"
    finally:
        await service.close()
