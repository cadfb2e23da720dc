"""Per-user message rate (``SANIC_CHAT_RATE_LIMIT``, e.g. ``60/minute``).

Both limiters run GCRA, the generic cell rate algorithm: the same answers as a
token bucket holding ``count`` tokens that refills one every ``period/count``
seconds, kept as one number per user (the "theoretical arrival time").

:class:`LocalRateLimiter` holds in one process. :class:`RedisRateLimiter` keeps
the number in Redis, updated by one script using Redis's clock, so the limit
holds across every worker and node sharing that Redis. When Redis cannot be
reached it falls back to the local limiter (a limit per process, rather than
none or an outage) and says so in the log once a minute. Its connections come from
the process's shared pool, which waits for a free one: a burst queues rather than
falls back, and a busy pool is never reported as an unreachable Redis.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

__all__ = [
    "LocalRateLimiter",
    "RateLimiter",
    "RedisRateLimiter",
    "RedisScriptStore",
    "RedisSource",
    "redis_client",
]

log = logging.getLogger(__name__)


class RateLimiter(Protocol):
    async def acquire(self, key: str) -> float:
        """Take one unit for ``key``: 0.0 when allowed, else the seconds to wait."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class LocalRateLimiter:
    def __init__(self, count: int, period_s: float) -> None:
        self.interval = period_s / count
        self.tolerance = period_s - self.interval
        self._tat: dict[str, float] = {}
        self._sweep_at = 4096

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._tat.clear()

    async def acquire(self, key: str) -> float:
        return self.take(key, time.monotonic())

    def take(self, key: str, now: float) -> float:
        tat = max(self._tat.get(key, now), now)
        if tat - now > self.tolerance:
            return tat - now - self.tolerance
        self._tat[key] = tat + self.interval
        if len(self._tat) > self._sweep_at:
            # a user whose arrival time has passed is back to a full bucket;
            # sweeping only when the table doubled keeps this O(1) amortized
            self._tat = {k: t for k, t in self._tat.items() if t > now}
            self._sweep_at = max(4096, 2 * len(self._tat))
        return 0.0


#: where a Redis-backed security store gets its connections: the process's shared pool
#: (a callable the composition root hands over; see ``bus/pool.py``), or a URL for a
#: pool of the store's own
RedisSource = str | Callable[[], Any]

#: a pool of one store's own: as big as the shared one, and it waits as long
_OWN_POOL_SIZE = 64
_OWN_POOL_WAIT_S = 5.0


def redis_client(source: RedisSource, *, timeout_s: float) -> Any:
    """A redis-py client on ``source``'s pool (closing it closes the pool only if it is
    the client's own)."""
    from redis.asyncio import BlockingConnectionPool, Redis

    if isinstance(source, str):
        pool = BlockingConnectionPool.from_url(
            source,
            max_connections=_OWN_POOL_SIZE,
            timeout=_OWN_POOL_WAIT_S,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
        )
        return Redis.from_pool(pool)
    return Redis(connection_pool=source())


class RedisScriptStore:
    """A security store on Redis (rate limiter, tickets): :meth:`start` opens a client on
    ``redis`` (see :func:`redis_client`) and registers the store's one script as
    ``self._script``; :meth:`close` closes the client."""

    #: the store's Lua script, and how long one of its commands may take
    LUA: ClassVar[str]
    TIMEOUT_S: ClassVar[float]

    def __init__(self, redis: RedisSource, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._redis: Any = None
        self._script: Any = None

    async def start(self) -> None:
        self._redis = redis_client(self.redis, timeout_s=self.TIMEOUT_S)
        self._script = self._redis.register_script(self.LUA)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None


def _pool_busy(exc: BaseException) -> bool:
    """``exc`` says no connection of the pool came free in time: Redis itself may be
    perfectly healthy."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    return isinstance(exc, RedisConnectionError) and str(exc) in (
        "No connection available.",
        "Too many connections",
    )


# KEYS: the user's key. ARGV: interval us, tolerance us. Returns the wait in us (0: allowed).
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if tat - now > tolerance then return math.ceil(tat - now - tolerance) end
tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
return 0
"""


class RedisRateLimiter(RedisScriptStore):
    LUA = _GCRA
    TIMEOUT_S = 2.0

    def __init__(
        self, redis: RedisSource, count: int, period_s: float, *, prefix: str = "sanic-chat:sec"
    ) -> None:
        super().__init__(redis, prefix)
        self.interval_us = int(period_s / count * 1_000_000)
        self.tolerance_us = int(period_s * 1_000_000) - self.interval_us
        self.fallback = LocalRateLimiter(count, period_s)
        self._warned_at = float("-inf")

    async def acquire(self, key: str) -> float:
        from redis.exceptions import RedisError

        try:
            wait_us = await self._script(
                keys=[f"{self.prefix}:rate:{key}"], args=[self.interval_us, self.tolerance_us]
            )
        except (RedisError, OSError) as exc:
            now = time.monotonic()
            if now - self._warned_at > 60:
                self._warned_at = now
                if _pool_busy(exc):
                    log.warning(
                        "rate limit: no free Redis connection in time (%s); limiting per process",
                        exc,
                    )
                else:
                    log.warning("rate limit: Redis unreachable (%s); limiting per process", exc)
            return await self.fallback.acquire(key)
        return int(wait_us) / 1_000_000
