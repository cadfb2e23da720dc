"""RESP on the wire for the bus's hot path: commands packed by hand, sent in batches.

Hand-built, in place of redis-py's ``execute_command`` / ``Pipeline``:

* **What it works around.** redis-py packs every command generically (``pack_command``:
  encode each argument, then join), which costs more than everything else a publish does
  in Python (see https://github.com/redis/redis-py/pull/372 for the same cost measured
  upstream); and its ``Pipeline`` buffers the commands of ONE caller until ``execute()``
  (https://github.com/redis/redis-py/issues/451), so the publishes of concurrent replies
  cannot share a write. Here the publish script's fixed arguments are packed once, and
  whatever concurrent callers queue while a batch is in flight goes out as the next one.
* **The benchmark.** ``pytest tests/bus/test_throughput.py -m slow -s`` (events per second
  for 1 and 50 publishers) and the two-worker ``capacity`` run in ``benchmarks/RESULTS.md``
  (server CPU per reply on the Redis bus).
* **When to delete it.** When redis-py offers auto-pipelining of concurrent commands on
  one connection (or a client that does, e.g. a hiredis-backed one, is on the design
  card) and ``test_throughput`` with ``execute_command`` stays within 10 % of this.

Connections come from redis-py (``AbstractConnection``: connect, auth, TLS, RESP parsing);
only the packing and the batching are ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sanic_chat.core.errors import Unavailable

log = logging.getLogger(__name__)

__all__ = ["PING", "Pipeline", "bulk", "pack", "settle"]


def bulk(data: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(data), data)


def pack(*args: bytes | str) -> bytes:
    """One command in RESP."""
    return b"*%d\r\n" % len(args) + b"".join(
        bulk(arg.encode() if isinstance(arg, str) else arg) for arg in args
    )


PING = pack(b"PING")


def settle(
    future: asyncio.Future[Any], reply: Any = None, error: BaseException | None = None
) -> None:
    if future.done():  # its caller was cancelled
        return
    if error is None:
        future.set_result(reply)
    else:
        future.set_exception(error)


class Pipeline:
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
            settle(future, error=Unavailable("the bus is closed"))
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
                        settle(future, error=Unavailable("the bus is closed"))
                    raise
                except Exception as exc:  # never leave a caller waiting forever
                    log.exception("redis bus: writer failed")
                    await self._drop()  # its replies may be out of step now
                    for _, future in batch:
                        settle(future, error=exc)

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
                            settle(item[1], error=exc)
                        else:
                            settle(item[1], reply)
            except (TimeoutError, RedisTimeoutError) as exc:  # stuck, not gone: no retry
                await self._drop()
                for _, future in batch:
                    settle(future, error=exc)
                return
            except (RedisConnectionError, OSError) as exc:
                await self._drop()
                batch = [item for item in batch if not item[1].done()]
                if not again:
                    for _, future in batch:
                        settle(future, error=exc)
                    return
                again = False
                continue
            if not unscripted:
                return
            await self._drop()  # a new connection loads the scripts
            if not again:
                for _, future in unscripted:
                    settle(future, error=NoScriptError("the publish script is missing"))
                return
            again = False
            batch = unscripted
