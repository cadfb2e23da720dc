"""The bus's pub/sub reader: one subscribed connection per process, one reader task.

Hand-built, in place of redis-py's ``PubSub``:

* **What it works around.** redis-py's asyncio ``PubSub`` is driven by polling
  ``get_message`` (``timeout=0`` by default: a busy loop,
  https://github.com/redis/redis-py/issues/3208; slow delivery next to other tasks,
  https://github.com/redis/redis-py/issues/3225), resubscribes on reconnect behind the
  caller's back with no way to learn when a SUBSCRIBE took effect, and turns each message
  into a dict. The bus needs "subscribed" to be a fact before ``subscribe`` returns (the
  resume path reads the tail only after it: see the invariants in ``redis.py``), a dead
  peer found by PINGs that must be answered in time, and one dispatch per message to
  plain callables in publish order. Here: ``SUBSCRIBE``/``UNSUBSCRIBE`` and a ``PING``
  barrier written under one lock, one task reading raw RESP2 replies.
* **The benchmark.** The two-worker ``capacity`` run in ``benchmarks/RESULTS.md`` (every
  delta of the other worker comes through this reader, and every own one comes back and is
  dropped unread; server CPU per reply on the Redis bus) and
  ``tests/bus/test_throughput.py``.
* **When to delete it.** When redis-py's ``PubSub`` can report that a (re)subscription was
  confirmed, reads with a blocking ``listen()`` without polling, and the two-worker
  ``capacity`` run with it shows no more CPU per reply than this.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from sanic_chat.core.errors import Unavailable
from sanic_chat.core.events import ServerEvent, event_from_wire
from sanic_chat.core.ports import CancelListener, EventListener

from .backoff import Backoff
from .listeners import remove_listener

log = logging.getLogger(__name__)

__all__ = ["PubSubReader"]

_DOWN = (RedisError, OSError, asyncio.TimeoutError)


class PubSubReader:
    """Keeps one pub/sub connection subscribed to the cancel channel and every channel a
    local listener wants, and dispatches what arrives.

    ``connect`` makes a fresh, unpooled connection (named ``client_name``);
    ``connect_timeout_s`` bounds connecting and waiting for a confirmation;
    ``health_check_s`` is how often the connection is PINGed (and how long a PONG may
    take); ``on_up`` runs (as a task) each time the connection is subscribed again after
    it was lost -- the bus restores its live tails there. A message whose payload starts
    with ``own_prefix`` was published by this process, whose local listeners heard it at
    publish time (:meth:`deliver`): it is skipped before it is decoded, and counted in
    :attr:`echoes_skipped`.
    """

    def __init__(
        self,
        connect: Callable[[], AbstractConnection],
        *,
        cancel_channel: bytes,
        client_name: str,
        connect_timeout_s: float,
        health_check_s: float,
        max_backoff_s: float,
        own_prefix: bytes,
        on_up: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._new_connection = connect
        self._own_prefix = own_prefix
        #: this process's own messages that came back from Redis and were dropped unread
        self.echoes_skipped = 0
        self._cancel_channel = cancel_channel
        self.client_name = client_name
        self.connect_timeout_s = connect_timeout_s
        self.health_check_s = health_check_s
        self.max_backoff_s = max_backoff_s
        self._on_up = on_up
        # channel (bytes) -> local listeners, in subscription order
        self._listeners: dict[bytes, list[EventListener]] = {}
        self._cancel_listeners: list[CancelListener] = []
        # PING tokens in flight on the pub/sub connection -> who waits for the PONG
        self._barriers: dict[bytes, asyncio.Future[None]] = {}
        self._tokens = itertools.count()
        # every write to the pub/sub connection, and the decision that leads to it, happens
        # under this lock, so SUBSCRIBE / UNSUBSCRIBE reach Redis in decision order
        self._lock = asyncio.Lock()
        self._conn: AbstractConnection | None = None
        self.connected = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._up_task: asyncio.Task[None] | None = None
        self._was_up = False
        self.closed = False

    @property
    def running(self) -> bool:
        return self._supervisor is not None

    # ------------------------------------------------------------------ lifecycle

    def ensure(self) -> None:
        if self.closed:
            raise Unavailable("the bus is closed")
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise(), name="redis-bus-reader")

    async def stop(self) -> None:
        for task in (self._supervisor, self._up_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._supervisor = self._up_task = None
        for future in self._barriers.values():
            if not future.done():
                future.set_exception(Unavailable("the bus is closed"))
        self._barriers.clear()

    async def close(self) -> None:
        self.closed = True
        await self.stop()
        self._listeners.clear()
        self._cancel_listeners.clear()

    # ------------------------------------------------------------------ listeners

    async def subscribe(
        self, channel: bytes, listener: EventListener
    ) -> Callable[[], Awaitable[None]]:
        """Listen to ``channel``; returns once Redis confirmed the subscription (raises
        :class:`Unavailable` if it does not within ``connect_timeout_s``)."""
        self.ensure()
        async with self._lock:
            listeners = self._listeners.get(channel)
            if listeners is None:
                self._listeners[channel] = [listener]
                await self._send(("SUBSCRIBE", channel))
            else:
                listeners.append(listener)
        done = False

        async def unsubscribe() -> None:
            nonlocal done
            if done:
                return
            done = True
            async with self._lock:
                if remove_listener(self._listeners, channel, listener):
                    await self._send(("UNSUBSCRIBE", channel))

        try:
            await self.barrier()
        except BaseException:
            await unsubscribe()
            raise
        return unsubscribe

    async def on_cancel(self, listener: CancelListener) -> None:
        self.ensure()
        self._cancel_listeners.append(listener)
        try:
            await self.barrier()
        except BaseException:
            self._cancel_listeners.remove(listener)
            raise

    def count(self, channel: bytes) -> int:
        return len(self._listeners.get(channel, ()))

    async def barrier(self, timeout_s: float | None = None) -> None:
        """Wait until Redis has processed every command sent on the pub/sub connection so
        far: a PING sent after them is answered after them. While the connection is down
        the PING is sent by the reconnect, after it subscribed everything again."""
        token = b"b%d" % next(self._tokens)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._barriers[token] = future
        try:
            async with self._lock:
                await self._send(("PING", token))
            async with asyncio.timeout(timeout_s or self.connect_timeout_s):
                await future
        except TimeoutError:
            raise Unavailable() from None
        finally:
            self._barriers.pop(token, None)

    async def _send(self, *commands: tuple[Any, ...]) -> None:
        """Write to the pub/sub connection (caller holds ``_lock``). While it is down this
        is a no-op: the reconnect subscribes every channel and re-sends every PING."""
        conn = self._conn
        if conn is None or not conn.is_connected:
            return
        try:
            await conn.send_packed_command(conn.pack_commands(commands), check_health=False)
        except _DOWN as exc:  # the reader sees the same failure and reconnects
            log.debug("write to the pub/sub connection failed: %r", exc)

    # ------------------------------------------------------------------ the reader

    async def _supervise(self) -> None:
        """Keep one subscribed pub/sub connection alive, forever: connect, subscribe all,
        read; on any failure (or a PONG that does not come) back off and start over."""
        backoff = Backoff(max_s=self.max_backoff_s)
        while True:
            # blocking reads wait for messages indefinitely; liveness is the PINGs'
            conn = self._new_connection()
            reader: asyncio.Task[None] | None = None
            try:
                async with asyncio.timeout(self.connect_timeout_s):
                    await conn.connect()
                async with self._lock:
                    self._conn = conn
                    commands: list[tuple[Any, ...]] = [
                        ("SUBSCRIBE", self._cancel_channel, *self._listeners)
                    ]
                    commands += [("PING", token) for token in self._barriers]
                    await conn.send_packed_command(conn.pack_commands(commands), check_health=False)
                reader = asyncio.create_task(self._read(conn), name="redis-bus-dispatch")
                while True:
                    done, _ = await asyncio.wait({reader}, timeout=self.health_check_s)
                    if done:
                        reader.result()  # raises why the connection ended
                        raise RedisConnectionError("pub/sub connection closed")
                    # a peer gone without a FIN: Unavailable when the PONG does not come
                    await self.barrier(self.health_check_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure means: start over
                if self.connected.is_set():
                    backoff.reset()
                    log.warning("redis bus: pub/sub connection lost (%r); reconnecting", exc)
                else:
                    attempt = backoff.failures + 1
                    level = logging.WARNING if attempt in (1, 10) else logging.DEBUG
                    log.log(level, "redis bus: cannot subscribe (%r), attempt %d", exc, attempt)
            finally:
                self.connected.clear()
                self._conn = None
                if reader is not None:
                    reader.cancel()
                    with contextlib.suppress(BaseException):
                        await reader
                await conn.disconnect(nowait=True)
            await backoff.sleep()

    async def _read(self, conn: AbstractConnection) -> None:
        while True:
            response = await conn.read_response()
            if not isinstance(response, list) or len(response) < 2:
                continue
            kind = response[0]
            if kind == b"message":
                self._dispatch(response[1], response[2])
            elif kind == b"pong":
                future = self._barriers.get(response[1])
                if future is not None and not future.done():
                    future.set_result(None)
            elif kind == b"subscribe" and not self.connected.is_set():
                self.connected.set()
                log.debug("redis bus: pub/sub connection %s up", self.client_name)
                self._came_up()

    def _came_up(self) -> None:
        again, self._was_up = self._was_up, True
        if not again or self._on_up is None:
            return  # the first time up: nothing was lost yet
        if self._up_task is None or self._up_task.done():
            self._up_task = asyncio.create_task(self._run_on_up(), name="redis-bus-up")

    async def _run_on_up(self) -> None:
        assert self._on_up is not None
        try:
            await self._on_up()
        except Exception:  # best effort: the next publish restores what is still missing
            log.exception("redis bus: work after reconnecting failed")

    def _dispatch(self, channel: bytes, payload: bytes) -> None:
        if channel == self._cancel_channel:
            generation_id = payload.decode(errors="replace")
            for cancel_listener in tuple(self._cancel_listeners):
                try:
                    cancel_listener(generation_id)
                except Exception:  # one broken listener must not starve the others
                    log.exception("cancel listener failed")
            return
        if payload.startswith(self._own_prefix):
            # published here: the local listeners heard it when its publish returned
            self.echoes_skipped += 1
            return
        if channel not in self._listeners:
            return
        try:
            event = event_from_wire(orjson.loads(payload))
        except Exception:  # a foreign or corrupt message must not kill the reader
            log.exception("undecodable bus message on %r", channel)
            return
        self.deliver(channel, event)

    def deliver(self, channel: bytes, event: ServerEvent) -> None:
        """Hand ``event`` to the local listeners of ``channel``, in subscription order: what
        arrives from other processes, and (called by the bus) what this process published."""
        listeners = self._listeners.get(channel)
        if not listeners:
            return
        for listener in tuple(listeners):
            try:
                listener(event)
            except Exception:  # one broken listener must not starve the others
                log.exception("bus listener failed")
