"""CPU per message cycle of the SQL store, in microseconds, on SQLite and PostgreSQL.

One cycle is what the server asks of the store per user message: post the
message (and read its history), two checkpoints of the streaming reply, and
finish it. Conversations run ten turns each, so the history grows from one
message to nineteen and then starts over. CPU is ``time.process_time`` of this
process (SQLite's engine runs in aiosqlite's thread, so its work is counted;
PostgreSQL's server process is not), wall time is shown beside it.

Each repeat opens a fresh store (a new SQLite file, a new PostgreSQL schema),
warms it up, then times ``--cycles`` cycles one after another on uvloop. Then,
untimed, it counts the statements (round trips) a cycle sends.

    python benchmarks/store_cost.py [--cycles 500] [--repeat 3] [--backend sqlite postgres]
                                    [--separate-history]
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import uvloop

from benchmarks._support import drop_schema
from sanic_chat.core.records import Message, utcnow
from sanic_chat.store import open_store

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
HISTORY_MAX_CHARS = 24_000  # the server's default (config.py)
TURNS = 10
REPLY = "The quick brown fox jumps over the lazy dog. " * 8


async def cycle(store: Any, combined: bool, conversation_id: str | None) -> str:
    post_args: dict[str, Any] = {
        "conversation_id": conversation_id,
        "client_id": str(uuid.uuid4()),
        "content": "How do rivers form deltas?",
        "model": "demo",
        "node_id": "bench",
        "lease_until": utcnow() + timedelta(seconds=30),
    }
    if combined:
        posted = await store.post_user_message(
            "alice", **post_args, history_max_chars=HISTORY_MAX_CHARS
        )
        history: list[Message] = list(posted.history)
    else:
        posted = await store.post_user_message("alice", **post_args)
        history = await store.history(
            posted.conversation.id, before=posted.user, max_chars=HISTORY_MAX_CHARS
        )
    assert posted.created and posted.reply is not None and history[-1] == posted.user
    reply_id = posted.reply.id
    await store.checkpoint(reply_id, REPLY[:100])
    await store.checkpoint(reply_id, REPLY[:250])
    await store.finish(reply_id, content=REPLY, status="complete")
    return str(posted.conversation.id)


async def run(store: Any, cycles: int, separate: bool) -> tuple[float, float, float]:
    """CPU and wall seconds of ``cycles`` cycles, and statements per cycle."""
    # a checkout from before ``history_max_chars`` existed reads the history separately
    combined = "history_max_chars" in inspect.signature(store.post_user_message).parameters
    combined = combined and not separate
    conversation_id: str | None = None
    for i in range(50):  # warm-up: pool connections, caches
        conversation_id = await cycle(store, combined, None if i % TURNS == 0 else conversation_id)
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(cycles):
        conversation_id = await cycle(store, combined, None if i % TURNS == 0 else conversation_id)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu, wall, await statements_per_cycle(store, combined)


async def statements_per_cycle(store: Any, combined: bool) -> float:
    """Statements sent per cycle (every one goes through the database's aio_execute_sql)."""
    sent = 0
    execute = store._db.aio_execute_sql

    async def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal sent
        sent += 1
        return await execute(*args, **kwargs)

    store._db.aio_execute_sql = counting
    try:
        conversation_id: str | None = None
        for i in range(TURNS * 2):
            conversation_id = await cycle(
                store, combined, None if i % TURNS == 0 else conversation_id
            )
    finally:
        del store._db.aio_execute_sql
    return sent / (TURNS * 2)


async def measure(backend: str, cycles: int, separate: bool = False) -> tuple[float, float, float]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            store = await open_store(f"sqlite:///{Path(tmp) / 'chat.db'}")
            try:
                await store.migrate()
                return await run(store, cycles, separate)
            finally:
                await store.close()
    schema = f"bench_store_{uuid.uuid4().hex[:12]}"
    store = await open_store(POSTGRES_URL, schema=schema)
    try:
        await store.migrate()
        return await run(store, cycles, separate)
    finally:
        await store.close()
        drop_schema(POSTGRES_URL, schema)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--backend", nargs="+", choices=["sqlite", "postgres"], default=["sqlite", "postgres"]
    )
    parser.add_argument(
        "--separate-history",
        action="store_true",
        help="read the history with its own history() call, as before post returned it",
    )
    args = parser.parse_args()
    for backend in args.backend:
        results = [
            uvloop.run(measure(backend, args.cycles, args.separate_history))
            for _ in range(args.repeat)
        ]
        cpu = sorted(c / args.cycles * 1e6 for c, _, _ in results)
        wall = sorted(w / args.cycles * 1e6 for _, w, _ in results)
        statements = statistics.median(n for _, _, n in results)
        print(
            f"{backend:8} CPU/cycle µs: median {statistics.median(cpu):7.0f} "
            f"[{cpu[0]:.0f}..{cpu[-1]:.0f}]   wall/cycle µs: median "
            f"{statistics.median(wall):7.0f} [{wall[0]:.0f}..{wall[-1]:.0f}]   "
            f"statements/cycle: {statements:.1f}"
        )


if __name__ == "__main__":
    main()
