"""The Redis bus: fan-out and live tails shared by many workers and nodes.

Layout (``prefix`` defaults to ``sanic-chat``)::

    {prefix}:gen:{generation_id}    Stream, one entry per generation event (field ``e``: the
                                    event JSON); expires ``tail_ttl_s`` after the terminal event
    {prefix}:conv:{conversation_id} pub/sub channel carrying the same JSON, per conversation
    {prefix}:cancel                 pub/sub channel carrying generation ids to stop

Invariants:

* A generation event is appended to its stream and published on its conversation's channel
  by one Lua script, so the two happen atomically: whoever subscribes (and waits for the
  confirmation) and *then* reads the stream sees every event in one or the other, possibly
  in both. Overlaps are dropped by offset, never gaps.
* Every stream key carries an expiry from its first entry on: a safety expiry of
  ``safety_ttl_s`` (refreshed by deltas while it runs) until the terminal event sets
  ``tail_ttl_s``. A node that dies mid-reply leaks nothing forever.
* One pub/sub connection per bus (per process) carries every conversation this process
  listens to; one reader task dispatches to the local listeners, in the order Redis
  delivers, which is publish order.
* When that connection drops (or stops answering PINGs), the reader reconnects with
  backoff and subscribes again. Events published during the outage are lost *for
  fan-out*; the tails in the streams are intact, so a follower that resumes by offset
  loses nothing.
* Publishing is on the hot path (one event per token): events are packed here, once,
  and the publishes of concurrent replies share one connection, sent in batches.

Pub/sub channels are global to the Redis server (not scoped by database number): two
deployments sharing one server must use different prefixes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import os
import random
import re
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sanic_chat.core.errors import Unavailable
from sanic_chat.core.events import (
    TERMINAL_TYPES,
    GenerationDelta,
    GenerationStarted,
    ServerEvent,
    TerminalEvent,
    encode_event,
    event_from_wire,
)
from sanic_chat.core.ports import CancelListener, EventListener, Tail

log = logging.getLogger(__name__)

__all__ = ["RedisBus"]

# ARGV: channel, payload, mode (o=open, d=delta, c=close), safety ms, refresh-below ms, close ms.
# A delta refreshes the safety expiry once less than half of it is left, but never on a
# closed tail: a closed tail's remaining life is at most ``close ms``, which is kept below
# ``refresh-below ms``, and an open tail whose deltas keep coming never gets that low.
_PUBLISH_SCRIPT = b"""
local key = KEYS[1]
redis.call('XADD', key, '*', 'e', ARGV[2])
local mode = ARGV[3]
if mode == 'o' then
  redis.call('PEXPIRE', key, ARGV[4])
elseif mode == 'c' then
  redis.call('PEXPIRE', key, ARGV[6])
else
  local left = redis.call('PTTL', key)
  if left < 0 or (left < tonumber(ARGV[5]) and left > tonumber(ARGV[6])) then
    redis.call('PEXPIRE', key, ARGV[4])
  end
end
return redis.call('PUBLISH', ARGV[1], ARGV[2])
"""

_MIN_BACKOFF_S = 0.05
_PING = b"*1\r\n$4\r\nPING\r\n"

# One XRANGE, returned as ONE JSON array of the entries' payloads: parsing 8,000 stream
# entries as RESP in Python costs ~60 ms, one orjson.loads of the array ~3 ms.
_TAIL_SCRIPT = b"""
local entries = redis.call('XRANGE', KEYS[1], '-', '+')
if #entries == 0 then return false end
local payloads = {}
for i, entry in ipairs(entries) do payloads[i] = entry[2][2] end
return '[' .. table.concat(payloads, ',') .. ']'
"""

_PUBLISH_SHA = hashlib.sha1(_PUBLISH_SCRIPT).hexdigest()
_TAIL_SHA = hashlib.sha1(_TAIL_SCRIPT).hexdigest()

# failures that mean "Redis is not reachable (right now)"; translated to Unavailable
_DOWN = (RedisError, OSError, asyncio.TimeoutError)

_DELTA = "generation.delta"
_STARTED = "generation.started"
_TERMINALS = frozenset({"generation.completed", "generation.cancelled", "generation.failed"})


def _default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def _client_name(*parts: str) -> str:
    # CLIENT SETNAME refuses spaces and newlines
    return re.sub(r"\s+", "_", ":".join(parts))


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(data), data)


def _pack(*args: bytes | str) -> bytes:
    """One command in RESP. The hot path packs its own: redis-py's generic packing costs
    more than everything else a publish does in Python."""
    return b"*%d\r\n" % len(args) + b"".join(
        _bulk(arg.encode() if isinstance(arg, str) else arg) for arg in args
    )


def _settle(
    future: asyncio.Future[Any], reply: Any = None, error: BaseException | None = None
) -> None:
    if future.done():  # its caller was cancelled
        return
    if error is None:
        future.set_result(reply)
    else:
        future.set_exception(error)


class _Pipeline:
    """The commands of concurrent callers, sent in batches over one connection.

    Whatever is queued while a batch is in flight goes out as the next batch: one write and
    one read pass for all of them instead of a round trip each. Commands are sent in call
    order, so a caller that awaits each call (one task publishing one reply) keeps its
    order. When the connection fails (a stale one after a Redis restart) or the server lost
    its scripts (SCRIPT FLUSH), what is unanswered is sent once more on a new connection:
    a command may then run twice, which consumers of the bus absorb by offset.
    """

    def __init__(
        self, connect: Callable[[], Awaitable[AbstractConnection]], timeout_s: float
    ) -> None:
        self._connect = connect
        self._timeout_s = timeout_s  # for one batch: connect, send, read every reply
        self._conn: AbstractConnection | None = None
        self._queue: list[tuple[bytes, asyncio.Future[Any]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def call(self, command: bytes) -> Any:
        """Send one packed command; its reply, or the redis-py / OS error it met."""
        if self._closed:
            raise Unavailable("the bus is closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((command, future))
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="redis-bus-writer")
        self._wake.set()
        return await future

    async def close(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for _, future in self._queue:
            _settle(future, error=Unavailable("the bus is closed"))
        self._queue.clear()
        await self._drop()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.disconnect(nowait=True)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    await self._send(batch)
                except asyncio.CancelledError:
                    for _, future in batch:
                        _settle(future, error=Unavailable("the bus is closed"))
                    raise
                except Exception as exc:  # never leave a caller waiting forever
                    log.exception("redis bus: writer failed")
                    await self._drop()  # its replies may be out of step now
                    for _, future in batch:
                        _settle(future, error=exc)

    async def _send(self, batch: list[tuple[bytes, asyncio.Future[Any]]]) -> None:
        again = True
        while batch:
            unscripted: list[tuple[bytes, asyncio.Future[Any]]] = []
            try:
                async with asyncio.timeout(self._timeout_s):
                    if self._conn is None or not self._conn.is_connected:
                        self._conn = await self._connect()
                    conn = self._conn
                    await conn.send_packed_command(
                        [b"".join(command for command, _ in batch)], check_health=False
                    )
                    for item in batch:
                        try:
                            reply = await conn.read_response()
                        except NoScriptError:
                            unscripted.append(item)
                        except ResponseError as exc:
                            _settle(item[1], error=exc)
                        else:
                            _settle(item[1], reply)
            except (TimeoutError, RedisTimeoutError) as exc:  # stuck, not gone: no retry
                await self._drop()
                for _, future in batch:
                    _settle(future, error=exc)
                return
            except (RedisConnectionError, OSError) as exc:
                await self._drop()
                batch = [item for item in batch if not item[1].done()]
                if not again:
                    for _, future in batch:
                        _settle(future, error=exc)
                    return
                again = False
                continue
            if not unscripted:
                return
            await self._drop()  # a new connection loads the scripts
            if not again:
                for _, future in unscripted:
                    _settle(future, error=NoScriptError("the publish script is missing"))
                return
            again = False
            batch = unscripted


class RedisBus:
    """A :class:`~sanic_chat.core.ports.Bus` over one Redis server.

    ``url`` is ``redis://[user:pass@]host:port/db`` or ``rediss://...``; its query string may
    set redis-py connection options (``socket_connect_timeout``, ``max_connections``...).
    ``prefix`` namespaces every key and channel (tests use one per run). ``node_id`` names
    this process's connections in ``CLIENT LIST`` (``{prefix}:{node_id}:pub`` / ``:sub``).
    ``connect_timeout_s`` bounds connecting and waiting for a SUBSCRIBE confirmation;
    ``command_timeout_s`` bounds one batch of publishes; ``health_check_s`` is how often
    the pub/sub connection is PINGed (and how long a PONG may take before the connection
    is considered dead and replaced); ``safety_ttl_s`` is the expiry of a tail that has
    not ended (raised to at least ``4 * tail_ttl_s``).

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

        self._pool: ConnectionPool = ConnectionPool.from_url(
            url,
            socket_timeout=command_timeout_s,
            socket_connect_timeout=connect_timeout_s,
            client_name=_client_name(prefix, self.node_id),
            # one immediate retry on a fresh connection (a pooled one may be stale after a
            # Redis restart); a retried publish may repeat an event, which offsets absorb
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            # the bus reads raw RESP2 replies (RESP3 turns pub/sub messages into
            # out-of-band pushes), as bytes, and never reads a PONG it did not ask for
            protocol=2,
            decode_responses=False,
            health_check_interval=0,
        )
        forced = {"protocol": 2, "decode_responses": False, "health_check_interval": 0}
        for name, value in forced.items():
            if self._pool.connection_kwargs.get(name, value) != value:
                raise ValueError(f"the Redis bus needs {name}={value}; drop it from the URL")
        self._redis = Redis(connection_pool=self._pool)
        self._pipeline = _Pipeline(self._connect_publisher, command_timeout_s)

        self._conv_prefix = f"{prefix}:conv:"
        self._gen_prefix = f"{prefix}:gen:"
        self._cancel_channel = f"{prefix}:cancel".encode()
        self._safety_ms = str(int(self.safety_ttl_s * 1000)).encode()
        self._refresh_below_ms = str(int(self.safety_ttl_s * 500)).encode()
        self._close_ms = str(int(tail_ttl_s * 1000)).encode()
        self._evalsha_head = (
            b"*10\r\n" + _bulk(b"EVALSHA") + _bulk(_PUBLISH_SHA.encode()) + _bulk(b"1")
        )
        self._evalsha_tails = {
            mode: b"".join(
                map(_bulk, (mode, self._safety_ms, self._refresh_below_ms, self._close_ms))
            )
            for mode in (b"o", b"d", b"c")
        }

        # channel (bytes) -> local listeners, in subscription order
        self._listeners: dict[bytes, list[EventListener]] = {}
        self._cancel_listeners: list[CancelListener] = []
        # PING tokens in flight on the pub/sub connection -> who waits for the PONG
        self._barriers: dict[bytes, asyncio.Future[None]] = {}
        self._tokens = itertools.count()
        # every write to the pub/sub connection, and the decision that leads to it, happens
        # under this lock, so SUBSCRIBE / UNSUBSCRIBE reach Redis in decision order
        self._sub_lock = asyncio.Lock()
        self._sub_conn: AbstractConnection | None = None
        self._connected = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect, and start the pub/sub reader. Raises :class:`Unavailable` if Redis
        cannot be reached within ``connect_timeout_s``."""
        await self.ping()
        self._ensure_reader()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await self._connected.wait()
        except TimeoutError:
            await self._stop_reader()
            raise Unavailable() from None

    async def close(self) -> None:
        self._closed = True
        await self._stop_reader()
        await self._pipeline.close()
        self._listeners.clear()
        self._cancel_listeners.clear()
        await self._redis.aclose()
        await self._pool.disconnect()

    async def ping(self) -> None:
        """Raise :class:`Unavailable` unless Redis answers and (once started) the pub/sub
        connection is up."""
        try:
            await self._pipeline.call(_PING)
        except _DOWN as exc:
            raise Unavailable() from exc
        if self._supervisor is not None and not self._connected.is_set():
            raise Unavailable()

    # ------------------------------------------------------------------ publishing

    async def publish(self, conversation_id: str, event: ServerEvent) -> None:
        payload = encode_event(event)
        channel = self._conv_prefix + conversation_id
        if isinstance(event, GenerationDelta):
            command = self._pack_publish(event.generation_id, channel, payload, b"d")
        elif isinstance(event, GenerationStarted):
            command = self._pack_publish(event.generation_id, channel, payload, b"o")
        elif isinstance(event, TERMINAL_TYPES):
            command = self._pack_publish(event.generation_id, channel, payload, b"c")
        else:
            command = _pack(b"PUBLISH", channel, payload)
        try:
            await self._pipeline.call(command)
        except _DOWN as exc:
            raise Unavailable() from exc

    def _pack_publish(self, generation_id: str, channel: str, payload: bytes, mode: bytes) -> bytes:
        # EVALSHA sha 1 key channel payload mode safety refresh-below close: only the key,
        # the channel and the payload change from one event to the next
        return b"".join(
            (
                self._evalsha_head,
                _bulk((self._gen_prefix + generation_id).encode()),
                _bulk(channel.encode()),
                _bulk(payload),
                self._evalsha_tails[mode],
            )
        )

    async def request_cancel(self, generation_id: str) -> None:
        try:
            await self._pipeline.call(_pack(b"PUBLISH", self._cancel_channel, generation_id))
        except _DOWN as exc:
            raise Unavailable() from exc

    async def _connect_publisher(self) -> AbstractConnection:
        # no per-read timeout: the pipeline times each batch as a whole
        conn = self._new_connection(self.publisher_client_name, None)
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await conn.connect()
                await conn.send_packed_command(
                    _pack(b"SCRIPT", b"LOAD", _PUBLISH_SCRIPT), check_health=False
                )
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
        """One XRANGE (see ``_TAIL_SCRIPT``), one pass: deltas are joined by offset (a delta
        that overlaps what is already there is trimmed, a repeated one skipped), so a
        retried publish never doubles text. A gap (a delta missing from the stream) ends
        the text there, unless the terminal event says what the whole text is."""
        try:
            raw = await self._run_script(_TAIL_SCRIPT, _TAIL_SHA, self._gen_prefix + generation_id)
        except _DOWN as exc:
            raise Unavailable() from exc
        if raw is None:
            return None
        started: GenerationStarted | None = None
        terminal: TerminalEvent | None = None
        parts: list[str] = []
        length = 0
        gap = False
        for wire in orjson.loads(raw):
            kind = wire["type"]
            if kind == _DELTA:
                if gap or terminal is not None:
                    continue
                offset: int = wire["offset"]
                text: str = wire["text"]
                if offset == length:
                    parts.append(text)
                    length += len(text)
                elif offset < length:
                    end = offset + len(text)
                    if end > length:
                        parts.append(text[length - offset :])
                        length = end
                else:
                    gap = True
                    log.warning("tail of %s has a gap at offset %d", generation_id, length)
            elif kind == _STARTED:
                if started is None:
                    event = event_from_wire(wire)
                    assert isinstance(event, GenerationStarted)
                    started = event
            elif kind in _TERMINALS and terminal is None:
                event = event_from_wire(wire)
                assert isinstance(event, TERMINAL_TYPES)
                terminal = event
        if terminal is not None and (started is None or gap):
            # a terminal without a live tail (an orphan marked interrupted elsewhere), or a
            # damaged one: the terminal's message is the whole reply
            message = terminal.message
            if started is None:
                started = GenerationStarted(
                    generation_id,
                    message.conversation_id,
                    generation_id,
                    message.reply_to,
                    message.model,
                )
            return Tail(started, message.content, terminal, started.conversation_id)
        if started is None:
            return None
        return Tail(started, "".join(parts), terminal, started.conversation_id)

    # ------------------------------------------------------------------ subscribing

    async def subscribe(
        self, conversation_id: str, listener: EventListener
    ) -> Callable[[], Awaitable[None]]:
        """Listen to a conversation; returns once Redis confirmed the subscription (raises
        :class:`Unavailable` if it does not within ``connect_timeout_s``)."""
        self._ensure_reader()
        channel = (self._conv_prefix + conversation_id).encode()
        async with self._sub_lock:
            listeners = self._listeners.get(channel)
            if listeners is None:
                self._listeners[channel] = [listener]
                await self._send_sub(("SUBSCRIBE", channel))
            else:
                listeners.append(listener)
        done = False

        async def unsubscribe() -> None:
            nonlocal done
            if done:
                return
            done = True
            async with self._sub_lock:
                listeners = self._listeners.get(channel)
                if listeners is None:
                    return
                try:
                    listeners.remove(listener)
                except ValueError:
                    return
                if not listeners:
                    del self._listeners[channel]
                    await self._send_sub(("UNSUBSCRIBE", channel))

        try:
            await self._barrier()
        except BaseException:
            await unsubscribe()
            raise
        return unsubscribe

    async def on_cancel(self, listener: CancelListener) -> None:
        """Register a handler of cancel requests (from any node, this one included);
        returns once the cancel channel is confirmed subscribed."""
        self._ensure_reader()
        self._cancel_listeners.append(listener)
        try:
            await self._barrier()
        except BaseException:
            self._cancel_listeners.remove(listener)
            raise

    def subscriber_count(self, conversation_id: str) -> int:
        return len(self._listeners.get((self._conv_prefix + conversation_id).encode(), ()))

    async def _barrier(self, timeout_s: float | None = None) -> None:
        """Wait until Redis has processed every command sent on the pub/sub connection so
        far: a PING sent after them is answered after them. While the connection is down
        the PING is sent by the reconnect, after it subscribed everything again."""
        token = b"b%d" % next(self._tokens)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._barriers[token] = future
        try:
            async with self._sub_lock:
                await self._send_sub(("PING", token))
            async with asyncio.timeout(timeout_s or self.connect_timeout_s):
                await future
        except TimeoutError:
            raise Unavailable() from None
        finally:
            self._barriers.pop(token, None)

    async def _send_sub(self, *commands: tuple[Any, ...]) -> None:
        """Write to the pub/sub connection (caller holds ``_sub_lock``). While it is down
        this is a no-op: the reconnect subscribes every channel and re-sends every PING."""
        conn = self._sub_conn
        if conn is None or not conn.is_connected:
            return
        try:
            await conn.send_packed_command(conn.pack_commands(commands), check_health=False)
        except _DOWN as exc:  # the reader sees the same failure and reconnects
            log.debug("write to the pub/sub connection failed: %r", exc)

    # ------------------------------------------------------------------ the reader

    def _ensure_reader(self) -> None:
        if self._closed:
            raise Unavailable("the bus is closed")
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise(), name="redis-bus-reader")

    async def _stop_reader(self) -> None:
        task, self._supervisor = self._supervisor, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        for future in self._barriers.values():
            if not future.done():
                future.set_exception(Unavailable("the bus is closed"))
        self._barriers.clear()

    async def _supervise(self) -> None:
        """Keep one subscribed pub/sub connection alive, forever: connect, subscribe all,
        read; on any failure (or a PONG that does not come) back off and start over."""
        delay = _MIN_BACKOFF_S
        failures = 0
        while True:
            # blocking reads wait for messages indefinitely; liveness is the PINGs'
            conn = self._new_connection(self.subscriber_client_name, None)
            reader: asyncio.Task[None] | None = None
            try:
                async with asyncio.timeout(self.connect_timeout_s):
                    await conn.connect()
                async with self._sub_lock:
                    self._sub_conn = conn
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
                    await self._barrier(self.health_check_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure means: start over
                if self._connected.is_set():
                    failures = 0
                    delay = _MIN_BACKOFF_S
                    log.warning("redis bus: pub/sub connection lost (%r); reconnecting", exc)
                else:
                    failures += 1
                    level = logging.WARNING if failures in (1, 10) else logging.DEBUG
                    log.log(level, "redis bus: cannot subscribe (%r), attempt %d", exc, failures)
            finally:
                self._connected.clear()
                self._sub_conn = None
                if reader is not None:
                    reader.cancel()
                    with contextlib.suppress(BaseException):
                        await reader
                await conn.disconnect(nowait=True)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.max_backoff_s)

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
            elif kind == b"subscribe" and not self._connected.is_set():
                self._connected.set()
                log.debug("redis bus: pub/sub connection %s up", self.subscriber_client_name)

    def _dispatch(self, channel: bytes, payload: bytes) -> None:
        if channel == self._cancel_channel:
            generation_id = payload.decode(errors="replace")
            for cancel_listener in tuple(self._cancel_listeners):
                try:
                    cancel_listener(generation_id)
                except Exception:  # one broken listener must not starve the others
                    log.exception("cancel listener failed")
            return
        listeners = self._listeners.get(channel)
        if not listeners:
            return
        try:
            event = event_from_wire(orjson.loads(payload))
        except Exception:  # a foreign or corrupt message must not kill the reader
            log.exception("undecodable bus message on %r", channel)
            return
        for listener in tuple(listeners):
            try:
                listener(event)
            except Exception:  # one broken listener must not starve the others
                log.exception("bus listener failed")
