"""CheckpointQueue on its own: batching, ordering, failures and closing, with an
in-memory ``write`` (the SQL store's batches are proved in test_sql.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from sanic_chat.core.errors import Unavailable
from sanic_chat.store.checkpoints import CheckpointQueue, TakeBatch


class Table:
    """What the writes committed, and each write's batch. A write waits for
    ``connection`` before it takes its batch, and for ``gate`` after."""

    def __init__(self) -> None:
        self.rows: dict[str, str] = {}
        self.batches: list[dict[str, str]] = []
        self.connection = asyncio.Event()
        self.connection.set()
        self.gate = asyncio.Event()
        self.gate.set()
        self.connecting = 0
        self.writing = 0
        self.most_writing = 0
        self.no_connection: Exception | None = None
        self.fail_with: Exception | None = None

    async def write(self, take: TakeBatch) -> None:
        self.connecting += 1
        self.most_writing = max(self.most_writing, self.connecting + self.writing)
        try:
            await self.connection.wait()
        finally:
            self.connecting -= 1
        if self.no_connection is not None:
            raise self.no_connection
        batch = take()
        self.batches.append(dict(batch))
        self.writing += 1
        try:
            await self.gate.wait()
            if self.fail_with is not None:
                raise self.fail_with
            self.rows.update(batch)
        finally:
            self.writing -= 1


async def _until(condition: Callable[[], bool], *, turns: int = 100) -> None:
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    pytest.fail("condition never held")


def _queue() -> tuple[Table, CheckpointQueue]:
    table = Table()
    return table, CheckpointQueue(table.write)


async def _hold_a_write(
    table: Table, queue: CheckpointQueue, message_id: str = "m0", text: str = "a"
) -> asyncio.Task[None]:
    """A checkpoint whose write has taken its batch and waits at ``table.gate``."""
    table.gate.clear()
    task = asyncio.create_task(queue.checkpoint(message_id, text))
    await _until(lambda: table.writing == 1)
    return task


async def test_calls_made_in_one_loop_turn_are_one_write() -> None:
    table, queue = _queue()
    await asyncio.gather(*(queue.checkpoint(f"m{i}", f"text {i}") for i in range(50)))
    assert len(table.batches) == 1
    assert table.rows == {f"m{i}": f"text {i}" for i in range(50)}


async def test_calls_made_while_a_write_runs_are_the_next_write_and_never_overlap() -> None:
    table, queue = _queue()
    first = await _hold_a_write(table, queue)
    later = [asyncio.create_task(queue.checkpoint(f"m{i}", f"text {i}")) for i in range(1, 20)]
    await asyncio.sleep(0)
    assert not first.done() and not any(task.done() for task in later)
    table.gate.set()
    await asyncio.gather(first, *later)
    assert table.batches == [{"m0": "a"}, {f"m{i}": f"text {i}" for i in range(1, 20)}]
    assert table.most_writing == 1


async def test_calls_made_while_the_writer_waits_for_a_connection_join_its_batch() -> None:
    table, queue = _queue()
    table.connection.clear()
    first = asyncio.create_task(queue.checkpoint("m0", "a"))
    await _until(lambda: table.connecting == 1)
    later = [asyncio.create_task(queue.checkpoint(f"m{i}", f"text {i}")) for i in range(1, 5)]
    await asyncio.sleep(0)
    table.connection.set()
    await asyncio.gather(first, *later)
    assert table.batches == [{"m0": "a"} | {f"m{i}": f"text {i}" for i in range(1, 5)}]


async def test_the_newest_content_of_an_id_wins_and_every_caller_returns() -> None:
    table, queue = _queue()
    in_flight = await _hold_a_write(table, queue, "m", "H")
    queued = [asyncio.create_task(queue.checkpoint("m", text)) for text in ("He", "Hel", "Hell")]
    await asyncio.sleep(0)
    table.gate.set()
    await asyncio.gather(in_flight, *queued)
    # the older content was written first, the newest last: it is what stays
    assert table.batches == [{"m": "H"}, {"m": "Hell"}]
    assert table.rows == {"m": "Hell"}


async def test_a_failed_write_fails_every_caller_of_its_batch_and_the_next_batch_is_tried() -> None:
    table, queue = _queue()
    table.fail_with = Unavailable("database down")
    results = await asyncio.gather(
        *(queue.checkpoint(f"m{i}", "x") for i in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, Unavailable) for r in results)
    assert len(table.batches) == 1 and table.rows == {}
    table.fail_with = None
    await queue.checkpoint("m0", "y")
    assert table.rows == {"m0": "y"}


async def test_a_cancelled_caller_does_not_disturb_the_others() -> None:
    table, queue = _queue()
    table.gate.clear()
    gone = asyncio.create_task(queue.checkpoint("a", "1"))
    stays = asyncio.create_task(queue.checkpoint("b", "2"))
    await _until(lambda: table.writing == 1)
    gone.cancel()
    await asyncio.sleep(0)
    table.gate.set()
    await stays
    assert gone.cancelled()
    assert table.rows == {"a": "1", "b": "2"}  # written anyway: a checkpoint may always be


async def test_close_answers_every_call_already_made_and_refuses_new_ones() -> None:
    table, queue = _queue()
    first = await _hold_a_write(table, queue)
    queued = asyncio.create_task(queue.checkpoint("m1", "b"))
    await asyncio.sleep(0)
    closing = asyncio.create_task(queue.aclose())
    await asyncio.sleep(0)
    assert not closing.done()  # the writes are still running
    with pytest.raises(Unavailable):
        await queue.checkpoint("m2", "c")
    table.gate.set()
    await asyncio.wait_for(asyncio.gather(first, queued, closing), timeout=5)
    assert table.rows == {"m0": "a", "m1": "b"}
    await queue.aclose()  # again: nothing to wait for


async def test_a_write_that_fails_before_taking_its_batch_fails_the_callers_waiting() -> None:
    table, queue = _queue()
    table.connection.clear()
    table.no_connection = Unavailable("no connection")
    calls = [asyncio.create_task(queue.checkpoint(f"m{i}", "x")) for i in range(3)]
    await _until(lambda: table.connecting == 1)
    late = asyncio.create_task(queue.checkpoint("m9", "x"))
    await asyncio.sleep(0)
    table.connection.set()
    results = await asyncio.gather(*calls, late, return_exceptions=True)
    assert all(isinstance(r, Unavailable) for r in results)
    assert table.batches == [] and queue._writer is None


async def test_a_write_that_never_takes_its_batch_fails_it_instead_of_hanging() -> None:
    async def forgetful(take: TakeBatch) -> None:
        return None

    queue = CheckpointQueue(forgetful)
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(queue.checkpoint("m", "x"), timeout=5)


async def test_a_cancelled_writer_leaves_no_caller_waiting() -> None:
    table, queue = _queue()
    first = await _hold_a_write(table, queue)
    queued = asyncio.create_task(queue.checkpoint("m1", "b"))
    await asyncio.sleep(0)
    writer = queue._writer  # the loop shutting down cancels every task; this one, here
    assert writer is not None
    writer.cancel()
    results = await asyncio.wait_for(
        asyncio.gather(first, queued, return_exceptions=True), timeout=5
    )
    assert all(isinstance(r, Unavailable) for r in results)
    # and the queue works again afterwards
    table.gate.set()
    await queue.checkpoint("m1", "c")
    assert table.rows == {"m1": "c"}
