"""The Redis bus: fan-out and live tails shared by many workers and nodes.

Layout (``prefix`` defaults to ``sanic-chat``)::

    {prefix}:gen:{generation_id}    Stream, one entry per generation event (field ``e``: the
                                    event JSON); expires ``tail_ttl_s`` after the terminal event
    {prefix}:conv:{conversation_id} pub/sub channel carrying the same JSON, per conversation
    {prefix}:cancel                 pub/sub channel carrying generation ids to stop

Every event JSON the bus writes starts with ``{"_from":"<bus id>",`` (a random id per bus
instance, i.e. per process): the field that lets a process recognise its own messages
when Redis pushes them back. Readers of events ignore it.

Invariants:

* A generation event is appended to its stream and published on its conversation's channel
  by one Lua script, so the two happen atomically: whoever subscribes (and waits for the
  confirmation) and *then* reads the stream sees every event in one or the other, possibly
  in both. Overlaps are dropped by offset, never gaps.
* Every stream key carries an expiry from its first entry on: a safety expiry of
  ``safety_ttl_s`` (refreshed by deltas while it runs) until the terminal event sets
  ``tail_ttl_s``. A node that dies mid-reply leaks nothing forever.
* A running reply's tail survives the loss of its stream (a Redis restart, no persistence
  needed): the process that runs it writes it anew (``tails.py``).
* One pub/sub connection per bus (per process) carries every conversation this process
  listens to (``pubsub.py``). When it drops, it reconnects with backoff and subscribes
  again. Events published during the outage are lost *for fan-out*; the tails are intact
  (or restored), so a follower that resumes by offset loses nothing.
* **Local delivery.** This process's listeners hear an event it publishes from ``publish``
  itself, once Redis ran the script (the event is in its tail and on its way to the other
  processes), before ``publish`` returns -- not through the pub/sub connection. Redis
  still pushes it back there (the process listens to the channel for the others'
  events); the reader drops it unread by its ``_from`` prefix. So a local listener hears
  each event once, in this process's publish order, without that second leg; the other
  processes' events come through the reader, in their publisher's order. Between the two
  only cause and effect orders events: one published here after another was heard here
  comes after it for every listener, but two published at the same moment by two
  processes may reach listeners in different processes in different orders (the
  protocol promises no more: docs/protocol.md, "Order and delivery").
  An event whose publish failed is heard by nobody, here included: a client never holds
  text that no tail has (a resume by offset on another node would refuse such an offset
  as past the end). The generation publishes what failed again, from its last published
  offset, once Redis answers, and every listener hears it then (when a publish timed out
  after Redis ran it, the other processes heard it already: offsets absorb the overlap).
  Delivering before Redis answered would save local listeners one round trip, at that
  price.
* Publishing is on the hot path (one event per token): events are packed here, once, and
  the publishes of concurrent replies share one connection, sent in batches (``resp.py``).

This module is the facade (publish, tails, subscribe); the wire, the reader, the tail
scripts and the pool are in their own modules.

Pub/sub channels are global to the Redis server (not scoped by database number): two
deployments sharing one server must use different prefixes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sanic_chat.core.errors import Unavailable
from sanic_chat.core.events import (
    TERMINAL_TYPES,
    GenerationDelta,
    GenerationStarted,
    ServerEvent,
    encode_event,
)
from sanic_chat.core.ports import CancelListener, EventListener, Tail

from .pool import redis_pool
from .pubsub import PubSubReader
from .resp import PING, Pipeline, bulk, pack
from .tails import (
    PUBLISH_SCRIPT,
    PUBLISH_SHA,
    RESTORE_SCRIPT,
    RESTORE_SHA,
    TAIL_LOST,
    TAIL_SCRIPT,
    TAIL_SHA,
    OpenTails,
    join_tail,
)

log = logging.getLogger(__name__)

__all__ = ["RedisBus"]

# failures that mean "Redis is not reachable (right now)"; translated to Unavailable
_DOWN = (RedisError, OSError, asyncio.TimeoutError)


def _default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def _client_name(*parts: str) -> str:
    # CLIENT SETNAME refuses spaces and newlines
    return re.sub(r"\s+", "_", ":".join(parts))


class RedisBus:
    """A :class:`~sanic_chat.core.ports.Bus` over one Redis server.

    ``url`` is ``redis://[user:pass@]host:port/db`` or ``rediss://...``; its query string may
    set redis-py connection options (``socket_connect_timeout``, ``max_connections``...).
    ``pool`` is the process's shared pool (see ``pool.py``; the bus then leaves closing it
    to its owner); without one the bus makes its own. ``prefix`` namespaces every key and
    channel (tests use one per run). ``node_id`` names this process's connections in
    ``CLIENT LIST`` (``{prefix}:{node_id}:pub`` / ``:sub``). ``connect_timeout_s`` bounds
    connecting and waiting for a SUBSCRIBE confirmation; ``command_timeout_s`` bounds one
    batch of publishes; ``health_check_s`` is how often the pub/sub connection is PINGed
    (and how long a PONG may take before the connection is considered dead and replaced);
    ``safety_ttl_s`` is the expiry of a tail that has not ended (raised to at least
    ``4 * tail_ttl_s``).

    Every failure to reach Redis surfaces as :class:`Unavailable`.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "sanic-chat",
        tail_ttl_s: float = 60.0,
        safety_ttl_s: float = 3600.0,
        node_id: str | None = None,
        connect_timeout_s: float = 2.0,
        command_timeout_s: float = 5.0,
        health_check_s: float = 15.0,
        max_backoff_s: float = 5.0,
        pool: ConnectionPool | None = None,
    ) -> None:
        if tail_ttl_s < 0:
            raise ValueError("tail_ttl_s must be >= 0")
        self.prefix = prefix
        self.node_id = node_id or _default_node_id()
        self.tail_ttl_s = tail_ttl_s
        # a closed tail must never look like an open one that needs its safety refreshed
        self.safety_ttl_s = max(safety_ttl_s, 4 * tail_ttl_s, 1.0)
        self.connect_timeout_s = connect_timeout_s
        self.health_check_s = health_check_s
        self.max_backoff_s = max_backoff_s
        self.command_timeout_s = command_timeout_s
        self.subscriber_client_name = _client_name(prefix, self.node_id, "sub")
        self.publisher_client_name = _client_name(prefix, self.node_id, "pub")

        self._owns_pool = pool is None
        self._pool: ConnectionPool = pool or redis_pool(
            url,
            client_name=_client_name(prefix, self.node_id),
            command_timeout_s=command_timeout_s,
            connect_timeout_s=connect_timeout_s,
        )
        self._redis = Redis(connection_pool=self._pool)
        self._pipeline = Pipeline(self._connect_publisher, command_timeout_s)

        #: this bus instance's id in every event JSON it writes (see ``_from`` above)
        self.instance_id = secrets.token_hex(6)
        self._own = b'{"_from":"%s",' % self.instance_id.encode()
        self._conv_prefix = f"{prefix}:conv:".encode()
        self._gen_prefix = f"{prefix}:gen:"
        self._safety_ms = str(int(self.safety_ttl_s * 1000)).encode()
        self._refresh_below_ms = str(int(self.safety_ttl_s * 500)).encode()
        self._close_ms = str(int(tail_ttl_s * 1000)).encode()
        self._evalsha_head = b"*10\r\n" + bulk(b"EVALSHA") + bulk(PUBLISH_SHA.encode()) + bulk(b"1")
        self._evalsha_tails = {
            mode: b"".join(
                map(bulk, (mode, self._safety_ms, self._refresh_below_ms, self._close_ms))
            )
            for mode in (b"o", b"d", b"c")
        }
        self._cancel_channel = f"{prefix}:cancel".encode()
        self._open = OpenTails(forget_after_s=self.safety_ttl_s)
        self._reader = PubSubReader(
            lambda: self._new_connection(self.subscriber_client_name, None),
            cancel_channel=self._cancel_channel,
            client_name=self.subscriber_client_name,
            connect_timeout_s=connect_timeout_s,
            health_check_s=health_check_s,
            max_backoff_s=max_backoff_s,
            own_prefix=self._own,
            on_up=self._restore_open_tails,
        )

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect, and start the pub/sub reader. Raises :class:`Unavailable` if Redis
        cannot be reached within ``connect_timeout_s``."""
        await self.ping()
        self._reader.ensure()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await self._reader.connected.wait()
        except TimeoutError:
            await self._reader.stop()
            raise Unavailable() from None

    async def close(self) -> None:
        await self._reader.close()
        await self._pipeline.close()
        self._open.clear()
        await self._redis.aclose()
        if self._owns_pool:
            await self._pool.disconnect()

    async def ping(self) -> None:
        """Raise :class:`Unavailable` unless Redis answers and (once started) the pub/sub
        connection is up."""
        try:
            await self._pipeline.call(PING)
        except _DOWN as exc:
            raise Unavailable() from exc
        if self._reader.running and not self._reader.connected.is_set():
            raise Unavailable()

    # ------------------------------------------------------------------ publishing

    def _encode(self, event: ServerEvent) -> bytes:
        # the event JSON (an object: it starts with "{"), tagged as this bus's own
        return self._own + encode_event(event)[1:]

    async def publish(self, conversation_id: str, event: ServerEvent) -> None:
        """Append ``event`` to its tail and publish it; this process's listeners hear it
        once Redis ran it, before this returns (see "Local delivery" above)."""
        payload = self._encode(event)
        channel = self._conv_prefix + conversation_id.encode()
        if isinstance(event, GenerationDelta):
            # remembered first: if this publish fails, a restore still has its text
            self._open.extended(event)
            command = self._pack_publish(event.generation_id, channel, payload, b"d")
        elif isinstance(event, GenerationStarted):
            self._open.opened(event.generation_id, channel, payload)
            command = self._pack_publish(event.generation_id, channel, payload, b"o")
        elif isinstance(event, TERMINAL_TYPES):
            self._open.closed(event.generation_id)
            command = self._pack_publish(event.generation_id, channel, payload, b"c")
        else:
            command = pack(b"PUBLISH", channel, payload)
        try:
            reply = await self._pipeline.call(command)
            if reply == TAIL_LOST and isinstance(event, GenerationDelta):
                # not appended, not published: the restore writes (and delivers here) the
                # whole text, this delta's included; or it is not running here at all
                await self._restore(event.generation_id)
                return
        except _DOWN as exc:
            raise Unavailable() from exc
        self._reader.deliver(channel, event)

    def _pack_publish(
        self, generation_id: str, channel: bytes, payload: bytes, mode: bytes
    ) -> bytes:
        # EVALSHA sha 1 key channel payload mode safety refresh-below close: only the key,
        # the channel and the payload change from one event to the next
        return b"".join(
            (
                self._evalsha_head,
                bulk((self._gen_prefix + generation_id).encode()),
                bulk(channel),
                bulk(payload),
                self._evalsha_tails[mode],
            )
        )

    async def _restore(self, generation_id: str) -> bool:
        """Write the tail of a reply running here anew if its stream is gone: its start
        and its whole text so far (one delta from offset 0), which the script publishes
        and this process's listeners hear too. True when it was missing."""
        tail = self._open.get(generation_id)
        if tail is None:
            log.warning("the tail of %s is gone and is not running here", generation_id)
            return False
        text = tail.text()
        whole = GenerationDelta(generation_id, 0, text)
        delta = self._encode(whole) if text else b""
        key = self._gen_prefix + generation_id
        command = pack(
            b"EVALSHA", RESTORE_SHA, b"1", key, tail.channel, tail.started, delta, self._safety_ms
        )
        restored = await self._pipeline.call(command)
        if restored != 1:
            return False
        log.info("restored the live tail of %s (%d code points)", generation_id, len(text))
        if text:
            # a follower here that joined from the database checkpoint while the stream
            # was gone misses the text in between: the whole text fills it (by offset)
            self._reader.deliver(tail.channel, whole)
        return True

    async def _restore_open_tails(self) -> None:
        """After the pub/sub connection came back (Redis may have restarted): restore the
        tail of every reply running here whose stream is gone."""
        for generation_id in self._open.ids():
            try:
                await self._restore(generation_id)
            except _DOWN as exc:  # down again: the next reconnect or publish restores
                log.debug("restoring the tail of %s failed: %r", generation_id, exc)
                return

    async def request_cancel(self, generation_id: str) -> None:
        try:
            await self._pipeline.call(pack(b"PUBLISH", self._cancel_channel, generation_id))
        except _DOWN as exc:
            raise Unavailable() from exc

    async def _connect_publisher(self) -> AbstractConnection:
        # no per-read timeout: the pipeline times each batch as a whole
        conn = self._new_connection(self.publisher_client_name, None)
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await conn.connect()
                await conn.send_packed_command(
                    pack(b"SCRIPT", b"LOAD", PUBLISH_SCRIPT)
                    + pack(b"SCRIPT", b"LOAD", RESTORE_SCRIPT),
                    check_health=False,
                )
                await conn.read_response()
                await conn.read_response()
        except (RedisConnectionError, RedisTimeoutError):
            await conn.disconnect(nowait=True)
            raise
        except RedisError as exc:
            # a refusal while connecting (no such db, a server that is not Redis)
            # is a failed connect, retried and reported like one -- not a writer bug
            await conn.disconnect(nowait=True)
            raise RedisConnectionError(str(exc)) from exc
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        return conn

    def _new_connection(self, name: str, socket_timeout: float | None) -> AbstractConnection:
        """A connection of our own, outside the pool, that never retries behind our back."""
        kwargs = {
            **self._pool.connection_kwargs,
            "client_name": name,
            "socket_timeout": socket_timeout,
            "socket_keepalive": True,
            "retry": Retry(NoBackoff(), 0),
        }
        return self._pool.connection_class(**kwargs)

    async def _run_script(self, script: bytes, sha: str, key: str) -> Any:
        try:
            return await self._redis.execute_command("EVALSHA", sha, 1, key)
        except NoScriptError:  # first use on this server, or it restarted: load, run again
            await self._redis.script_load(script)
            return await self._redis.execute_command("EVALSHA", sha, 1, key)

    # ------------------------------------------------------------------ tails

    async def tail(self, generation_id: str) -> Tail | None:
        """One XRANGE (see ``tails.TAIL_SCRIPT``), joined by offset (``tails.join_tail``)."""
        try:
            raw = await self._run_script(TAIL_SCRIPT, TAIL_SHA, self._gen_prefix + generation_id)
        except _DOWN as exc:
            raise Unavailable() from exc
        if raw is None:
            return None
        return join_tail(generation_id, raw)

    # ------------------------------------------------------------------ subscribing

    async def subscribe(
        self, conversation_id: str, listener: EventListener
    ) -> Callable[[], Awaitable[None]]:
        """Listen to a conversation; returns once Redis confirmed the subscription (raises
        :class:`Unavailable` if it does not within ``connect_timeout_s``)."""
        return await self._reader.subscribe(self._conv_prefix + conversation_id.encode(), listener)

    async def on_cancel(self, listener: CancelListener) -> None:
        """Register a handler of cancel requests (from any node, this one included);
        returns once the cancel channel is confirmed subscribed."""
        await self._reader.on_cancel(listener)

    @property
    def echoes_skipped(self) -> int:
        """How many of this process's own events Redis pushed back and the reader dropped
        unread (their local listeners had heard them from ``publish``)."""
        return self._reader.echoes_skipped

    def subscriber_count(self, conversation_id: str) -> int:
        return self._reader.count(self._conv_prefix + conversation_id.encode())
