"""Checkpoints of streaming replies, written together: one statement per batch.

Every streaming reply checkpoints its partial text about once a second. With
hundreds of replies on one saturated event loop, a round trip each is hundreds
of waits for a turn of that loop. :class:`CheckpointQueue` gathers the calls
that arrive in the same loop turn, while the previous batch is being written,
or while this one waits for a connection, and hands them to its ``write`` as
one batch (``{message id: content}``): ``write`` takes the batch only once it
holds its pooled connection, because under load that wait is most of a
write's time.

Invariants:

* ``checkpoint()`` returns only after a write holding its content, or newer
  content for the same id, committed. Within a batch the newest content per id
  wins (a later call replaces an earlier one's); batches are written one after
  another, so an earlier call's content never lands after a later one's.
* At most one batch is being written at a time per queue (per store).
* If a write fails, every caller in its batch gets the exception (the core
  logs it and checkpoints again next interval); if it fails before taking its
  batch (no connection), that is every caller waiting then. The next batch is
  tried afresh.
* ``write`` never changes a reply that is no longer ``streaming`` (its WHERE
  clause, in ``sql.py``): a finish that won the race stays as it finished.
* No caller is left waiting: :meth:`CheckpointQueue.aclose` refuses new calls
  and returns once every call already made has its answer, and if the writer
  task is cancelled (the loop shutting down) its callers get :class:`Unavailable`.

A caller that is cancelled while it waits stops waiting; its content is
written anyway, which a checkpoint may always be.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable

from ..core.errors import Unavailable

__all__ = ["CheckpointQueue", "TakeBatch"]

#: hands ``write`` its batch (message id -> content); called once per write
TakeBatch = Callable[[], dict[str, str]]


class CheckpointQueue:
    """Concurrent checkpoints, written by ``write`` one batch at a time."""

    def __init__(self, write: Callable[[TakeBatch], Awaitable[None]]) -> None:
        """``write(take)`` writes ``take()``'s batch -- calling it exactly once,
        just before the statement goes out -- and returns once it committed."""
        self._write = write
        #: the next batch: message id -> the newest content asked for
        self._pending: dict[str, str] = {}
        #: the callers whose content is in ``_pending``
        self._waiters: list[asyncio.Future[None]] = []
        #: the callers whose content is in the batch being written
        self._taken: list[asyncio.Future[None]] = []
        #: writes batches while there are any; None when idle
        self._writer: asyncio.Task[None] | None = None
        self._closed = False

    async def checkpoint(self, message_id: str, content: str) -> None:
        if self._closed:
            raise Unavailable("the store is closed")
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._pending[message_id] = content
        self._waiters.append(waiter)
        if self._writer is None:
            # Starts on a later turn of the loop, so the calls made in this
            # turn go in its first batch. A fresh context: the writer must not
            # inherit the caller's context variables (peewee-async keeps the
            # caller's connection in one).
            self._writer = loop.create_task(self._write_batches(), context=contextvars.Context())
        await waiter

    async def _write_batches(self) -> None:
        try:
            while self._pending:
                try:
                    await self._write(self._take)
                    if not self._taken:
                        raise RuntimeError("the checkpoint write did not take its batch")
                except Exception as exc:
                    if not self._taken:  # failed before taking: it was this batch's
                        self._take()
                    _settle(self._taken, exc)
                else:
                    _settle(self._taken, None)
                self._taken = []
        finally:
            # No await between the loop's last check and here: a call made
            # from now on starts a new writer.
            self._writer = None
            if self._taken or self._waiters:  # cancelled mid-way
                _settle(self._taken + self._waiters, Unavailable("the checkpoint was not written"))
                self._pending, self._waiters, self._taken = {}, [], []

    def _take(self) -> dict[str, str]:
        batch, self._pending = self._pending, {}
        self._taken, self._waiters = self._waiters, []
        return batch

    async def aclose(self) -> None:
        """Refuse new checkpoints; return once those already asked for are
        answered (written, or failed -- bounded by the database's timeout)."""
        self._closed = True
        writer = self._writer
        if writer is not None:
            # wait() neither raises the writer's outcome nor cancels it if we are cancelled
            await asyncio.wait({writer})


def _settle(waiters: list[asyncio.Future[None]], failure: Exception | None) -> None:
    for waiter in waiters:
        if waiter.done():  # its caller was cancelled and went away
            continue
        if failure is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(failure)
