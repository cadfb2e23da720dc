"""Choose the bus from ``SANIC_CHAT_BUS_URL``: ``memory://`` or ``redis://host:port/db``.

Import-light: the Redis bus (and redis-py) is imported only for a Redis URL.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from sanic_chat.core.ports import Bus

from ..redaction import redact_url
from .memory import MemoryBus

__all__ = ["open_bus"]

_ACCEPTED = "memory://, redis://host:port/db or rediss://host:port/db"


def open_bus(
    url: str,
    *,
    tail_ttl_s: float = 60.0,
    node_id: str | None = None,
    prefix: str = "sanic-chat",
    pool: Callable[[], Any] | None = None,
) -> Bus:
    """The bus for ``url``; not started yet (call ``await bus.start()``). ``prefix``
    namespaces a Redis bus's keys and channels (ignored by the in-memory bus). ``pool``
    gives the process's shared Redis pool (``pool.SharedPool``), called once the URL is
    known to be a Redis one; without it a Redis bus makes a pool of its own.

    Raises :class:`ValueError` naming the accepted forms if ``url`` is none of them
    (the message never repeats the URL's password).
    """
    url = url.strip()
    try:
        parts = urlsplit(url)
        _ = parts.port  # a port that is not a number in range raises ValueError
    except ValueError:
        raise ValueError(f"unsupported bus URL {redact_url(url)!r}: use {_ACCEPTED}") from None
    if parts.scheme == "memory" and not (parts.netloc or parts.path):
        return MemoryBus(tail_ttl_s=tail_ttl_s)
    db = parts.path.strip("/")
    if (
        parts.scheme in ("redis", "rediss")
        and parts.hostname
        and (db == "" or (db.isascii() and db.isdigit()))
    ):
        from .redis import RedisBus

        return RedisBus(
            url,
            prefix=prefix,
            tail_ttl_s=tail_ttl_s,
            node_id=node_id,
            pool=pool() if pool is not None else None,
        )
    raise ValueError(f"unsupported bus URL {redact_url(url)!r}: use {_ACCEPTED}")
