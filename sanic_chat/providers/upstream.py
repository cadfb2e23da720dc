"""The providers' HTTP stack: the one seam between httpx (the providers' API:
every provider talks to an ``httpx.AsyncClient``) and what carries its requests.

Two stacks, chosen by the composition root (``app.py``) and nowhere else:

* ``pool`` (the default): :class:`~.pool.ConnectionPool`, our HTTP/1.1 pool over
  :class:`~.http11.Http11Connection` (httptools). Hand-built: see the headers of
  pool.py and http11.py for the upstream issues it works around, the benchmark
  that justifies it and when to delete it.
* ``httpx``: httpx's own transport (httpcore's pool and h11 on anyio), built by
  the client itself from :data:`POOL_LIMITS` and the environment, so it honours
  ``HTTP_PROXY``/``HTTPS_PROXY``/``ALL_PROXY``/``NO_PROXY`` (our pool does not
  speak to proxies: with one in the environment the composition root always
  picks this stack).

Both decode event streams with :mod:`.event_stream`, and map failures through
the one map in :mod:`.http` (both raise httpx's own exception types).
"""

from __future__ import annotations

from collections.abc import Callable

import httpx

from .pool import ConnectionPool

__all__ = [
    "POOL_LIMITS",
    "UPSTREAM_HTTP",
    "TransportFactory",
    "httpx_transport",
    "pool_transport",
    "upstream_transports",
]

#: HTTP/1.1 carries one stream per connection: the pool must hold as many
#: connections as replies may run at once against one upstream.
POOL_LIMITS = httpx.Limits(max_connections=4096, max_keepalive_connections=256, keepalive_expiry=30)

#: a new transport for one upstream's client. None: httpx's own, which the client
#: builds from its limits and the environment (the only way httpx honours
#: ``HTTP(S)_PROXY`` and ``NO_PROXY``: a client handed a transport ignores them).
TransportFactory = Callable[[], httpx.AsyncBaseTransport | None]


def pool_transport() -> httpx.AsyncBaseTransport | None:
    """Our pool (``SANIC_CHAT_UPSTREAM_HTTP=pool``)."""
    return ConnectionPool.from_limits(POOL_LIMITS)


def httpx_transport() -> httpx.AsyncBaseTransport | None:
    """httpx's own (``SANIC_CHAT_UPSTREAM_HTTP=httpx``, or a proxy in the environment)."""
    return None


#: ``SANIC_CHAT_UPSTREAM_HTTP`` values
UPSTREAM_HTTP: dict[str, TransportFactory] = {"pool": pool_transport, "httpx": httpx_transport}


def upstream_transports(choice: str, *, proxied: bool) -> TransportFactory:
    """The stack named ``choice``; httpx's own whenever ``proxied`` (the
    environment names a proxy), which our pool would bypass."""
    if proxied:
        return httpx_transport
    try:
        return UPSTREAM_HTTP[choice]
    except KeyError:
        raise ValueError(
            f"unknown upstream HTTP stack {choice!r}; use one of {', '.join(UPSTREAM_HTTP)}"
        ) from None
