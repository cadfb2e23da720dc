"""Leases and recovery: every reply running here holds a lease on its row,
renewed every ``lease_s / 3``; a reply whose node stopped renewing is an
orphan, ended ``interrupted`` with its checkpointed text by whichever node
finds it. This loop is also the process's watch on its database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from datetime import datetime, timedelta

from .errors import Unavailable, failure_cause
from .generation import Generation, terminal_event_for
from .ports import Bus, MessageStore
from .records import Message, utcnow

log = logging.getLogger(__name__)

__all__ = ["Leases"]

#: added to "now" so that every lease counts as lapsed (start-up of a sole process)
_EVERY_LEASE_LAPSED = timedelta(days=36_500)


class Leases:
    def __init__(
        self,
        *,
        store: MessageStore,
        bus: Bus,
        node_id: str,
        lease_s: float,
        running: Mapping[str, Generation],
        sole_process: bool,
    ) -> None:
        self._store = store
        self._bus = bus
        self._node_id = node_id
        self._lease_s = lease_s
        #: the replies running in this process (owned by Posting), read live
        self._running = running
        #: True when no other process can be running replies on this store
        #: (the embedded default: SQLite and the in-memory bus). Then every
        #: ``streaming`` row found at start-up is an orphan of a dead process.
        self.sole_process = sole_process
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._keep())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def recover_at_start(self) -> list[Message]:
        """End the replies a previous process left ``streaming``, as soon as it
        is safe to: nothing runs in this process yet, so

        * as the sole process, every ``streaming`` row is an orphan, whoever's
          lease it still holds (a restart is quicker than the lease);
        * otherwise rows of this node id (a restart with a stable
          ``node_id``) are orphans, and others only once their lease lapsed --
          a live node on the shared bus may still be streaming them.
        """
        if self.sole_process:
            return await self.recover_orphans(now=utcnow() + _EVERY_LEASE_LAPSED)
        mine = await self.recover_orphans(node_id=self._node_id)
        return mine + await self.recover_orphans()

    async def recover_orphans(
        self, *, now: datetime | None = None, node_id: str | None = None
    ) -> list[Message]:
        """Mark replies whose node stopped renewing their lease before ``now``
        (or, with ``node_id``, every reply of that node) ``interrupted``,
        keeping their checkpointed text, and tell anyone following them."""
        try:
            orphans = await self._store.interrupt_orphans(now=now or utcnow(), node_id=node_id)
        except Unavailable:
            return []
        for message in orphans:
            if message.id in self._running:
                continue
            with contextlib.suppress(Unavailable):
                await self._bus.publish(message.conversation_id, terminal_event_for(message))
        return orphans

    async def _keep(self) -> None:
        """Every ``lease_s / 3``: renew the leases of the replies running here, then
        end other nodes' orphans. A node that dies is thus found between
        ``2/3`` and ``4/3`` of ``lease_s`` after its last renewal.

        While the database is unreachable nobody can renew, so when it returns
        every lease may have lapsed although its node is alive: orphans are swept
        again only once the store has answered for a whole lease period -- time
        for every live node to renew its own.

        This loop is also the process's watch on its database: an outage is
        logged once with its cause (again only if the cause changes), and its
        end once, never a line per attempt.
        """
        lease = self._lease_s
        sweep_after = 0.0  # monotonic time
        failing: str | None = None  # the cause logged for the outage going on
        failing_since = 0.0
        while True:
            await asyncio.sleep(lease / 3)
            try:
                if self._running:
                    await self._store.renew_leases(
                        self._node_id, list(self._running), utcnow() + timedelta(seconds=lease)
                    )
                else:
                    await self._store.ping()
            except Exception as exc:
                cause = failure_cause(exc)
                if cause != failing:
                    if failing is None:
                        failing_since = time.monotonic()
                    failing = cause
                    log.warning(
                        "database unreachable: %s (running replies cannot renew their leases; "
                        "checking again every %g s)",
                        cause,
                        lease / 3,
                        # a failure that is not an outage is a bug: its traceback, once
                        exc_info=not isinstance(exc, Unavailable),
                    )
                sweep_after = time.monotonic() + lease
                continue
            if failing is not None:
                log.warning(
                    "database reachable again after %.0f s", time.monotonic() - failing_since
                )
                failing = None
            if time.monotonic() < sweep_after:
                continue
            try:
                await self.recover_orphans()
            except Exception as exc:
                log.warning(
                    "orphan sweep failed: %s",
                    failure_cause(exc),
                    exc_info=not isinstance(exc, Unavailable),
                )
