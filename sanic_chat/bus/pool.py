"""The process's one pool of Redis connections, shared by the bus (tail reads), the
ticket store and the rate limiters; built by the composition root.

It waits for a free connection (``BlockingConnectionPool``) instead of failing at its
size: a burst of requests right after a start queues for ``wait_s`` at most rather than
answering 503, and a rate limiter never takes a busy pool for an unreachable Redis.
The bus's publishes and its pub/sub reader use connections of their own (see
``resp.py`` and ``pubsub.py``), outside this pool.

Its connections speak RESP2 and return bytes (what the bus's scripts read); the URL's
query string may set redis-py options, e.g. ``?max_connections=200``.
"""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

__all__ = ["DEFAULT_MAX_CONNECTIONS", "DEFAULT_WAIT_S", "SharedPool", "redis_pool"]

#: connections per process; each serves one command at a time, and most take well under
#: a millisecond, so this is far above what one process keeps busy
DEFAULT_MAX_CONNECTIONS = 64
#: how long a command waits for a free connection before it fails
DEFAULT_WAIT_S = 5.0

#: settings the bus's raw replies rely on
_FORCED = {"protocol": 2, "decode_responses": False, "health_check_interval": 0}


def redis_pool(
    url: str,
    *,
    client_name: str | None = None,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    wait_s: float = DEFAULT_WAIT_S,
    command_timeout_s: float = 5.0,
    connect_timeout_s: float = 2.0,
) -> BlockingConnectionPool:
    """A pool for ``url`` (``redis://`` or ``rediss://``); connects lazily. Raises
    :class:`ValueError` if the URL asks for a protocol or decoding the bus cannot read."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=wait_s,
        socket_timeout=command_timeout_s,
        socket_connect_timeout=connect_timeout_s,
        client_name=client_name,
        # one immediate retry on a fresh connection (a pooled one may be stale after a
        # Redis restart); a retried command may run twice, which its callers absorb
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        **_FORCED,
    )
    for name, value in _FORCED.items():
        if pool.connection_kwargs.get(name, value) != value:
            raise ValueError(f"the Redis bus needs {name}={value}; drop it from the URL")
    return pool


class SharedPool:
    """The process's pool, made on first use -- inside the event loop that will use it --
    and handed to each of its users as this callable. Closed by its owner, the
    composition root, after every user is done; a later call makes a new one."""

    def __init__(self, url: str, *, client_name: str | None = None) -> None:
        self.url = url
        self.client_name = client_name
        self._pool: BlockingConnectionPool | None = None

    def __call__(self) -> BlockingConnectionPool:
        if self._pool is None:
            self._pool = redis_pool(self.url, client_name=self.client_name)
        return self._pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.disconnect()
