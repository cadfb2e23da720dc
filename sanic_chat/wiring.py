"""The adapters, built from the settings: the one place that reads a URL's scheme or
the environment to choose an implementation (docs/architecture.md, rule 3).

``app.py`` (the composition root) assembles the server from these: the store, the
bus and the process's one Redis pool, the ticket store and the rate limiters the
security layer receives ready-made, the providers' catalog and HTTP stack, and this
process's node id. ``sanic-chat migrate`` opens the store through the same
:func:`open_store_for`, and ``startup.check_bus`` tries the bus :func:`open_bus_for`
builds. What is left of "which one": a Redis bus URL puts the tickets and the rate
limits in that Redis (every worker and node sees them), else they live in this
process; ``sqlite:`` is the embedded store, prepared and migrated here.

Import-light: Sanic, redis-py and the providers load only when a function needs them,
so ``sanic-chat migrate`` starts no faster path than the store it opens.
"""

from __future__ import annotations

import os
import socket
import urllib.request
import uuid
from typing import TYPE_CHECKING

from .config import RateLimit, Settings
from .startup import StartupError, prepare_sqlite, redact_url, unusable_postgres, unusable_sqlite

if TYPE_CHECKING:
    from .bus.pool import SharedPool
    from .core.ports import Bus, MessageStore
    from .metrics import Metrics
    from .providers.catalog import ModelCatalog
    from .providers.upstream import TransportFactory
    from .security import Security
    from .security.identity import TicketPaths
    from .security.ratelimit import RateLimiter
    from .security.tickets import TicketStore
    from .store.sql import SqlMessageStore

__all__ = [
    "catalog_for",
    "metrics_for",
    "migrate_store",
    "node_id_for",
    "open_bus_for",
    "open_store_for",
    "providers_http",
    "rate_limiter_for",
    "security_for",
    "shared_redis_for",
    "sole_process",
    "tickets_for",
]


def _redis_bus(settings: Settings) -> bool:
    return settings.bus_url.startswith(("redis://", "rediss://"))


# -- store and bus --------------------------------------------------------------


async def open_store_for(settings: Settings, *, migrate: bool | None = None) -> MessageStore:
    """The store, its schema up to date if ``migrate`` (default: ``auto_migrate``; the
    CLI's ``migrate`` passes True), else checked to be there (PostgreSQL). Raises
    :class:`~sanic_chat.startup.StartupError` (one line) when the database cannot be
    used, :class:`ValueError` for a malformed URL."""
    from .store import open_store

    migrate = settings.auto_migrate if migrate is None else migrate
    sqlite_path = prepare_sqlite(settings) if settings.database_url.startswith("sqlite:") else None
    store = await open_store(settings.database_url)
    if sqlite_path is None:
        try:
            await _prepare_postgres(store, settings, migrate=migrate)
        except BaseException:
            await store.close()
            raise
        return store
    if migrate:
        try:
            # the embedded default keeps its own schema up to date
            await store.migrate()
        except BaseException as exc:
            await store.close()  # its connections' threads would keep the process alive
            if isinstance(exc, Exception):
                raise unusable_sqlite(sqlite_path, exc) from exc
            raise
    return store


async def _prepare_postgres(store: SqlMessageStore, settings: Settings, *, migrate: bool) -> None:
    """Migrate the PostgreSQL schema (safe with every worker of every node starting at
    once, see ``SqlMessageStore.migrate``) or check that it is there. Raises
    :class:`~sanic_chat.startup.StartupError` (one line) when the database cannot be
    reached or used, or has no schema and may not make it: a node does not start on a
    database it cannot use (once started, it rides out an outage: ``/readyz`` says 503
    with the cause until the database is back)."""
    try:
        if migrate:
            await store.migrate()
            return
        missing = await store.missing_schema()
    except Exception as exc:
        raise unusable_postgres(settings.database_url, exc) from exc
    if missing:
        tables = {"conversation", "message"}
        what = "no sanic-chat tables" if tables <= set(missing) else f"no {', '.join(missing)}"
        raise StartupError(
            f"the database at {redact_url(settings.database_url)} has {what}: "
            "run `sanic-chat migrate` "
            "(or let the server do it: SANIC_CHAT_AUTO_MIGRATE=1, the default)"
        )


async def migrate_store(settings: Settings) -> None:
    """``sanic-chat migrate``: the server's store, opened and migrated, then closed."""
    store = await open_store_for(settings, migrate=True)
    await store.close()


def shared_redis_for(settings: Settings) -> SharedPool | None:
    """The process's one Redis pool (with a Redis bus): the bus's tail reads, the tickets
    and the rate limiters share it, and it waits for a free connection when busy."""
    if not _redis_bus(settings):
        return None
    from .bus.pool import SharedPool

    name = f"{settings.bus_prefix}:{socket.gethostname()}-{os.getpid()}:pool"
    return SharedPool(settings.bus_url.strip(), client_name=name.replace(" ", "_"))


def open_bus_for(
    settings: Settings, node_id: str | None = None, redis: SharedPool | None = None
) -> Bus:
    """The bus for ``SANIC_CHAT_BUS_URL`` (not started); a Redis one draws its tail reads
    from ``redis``, the shared pool, when given."""
    from .bus.url import open_bus

    return open_bus(
        settings.bus_url,
        tail_ttl_s=settings.tail_ttl_s,
        node_id=node_id,
        prefix=settings.bus_prefix,
        pool=redis,
    )


def sole_process(settings: Settings) -> bool:
    """The embedded default (SQLite + in-memory bus) is one process by construction:
    it may end every reply left streaming at start-up."""
    return settings.database_url.startswith("sqlite") and settings.bus_url.startswith("memory://")


def node_id_for(settings: Settings) -> str:
    """This process's node id: it owns the leases of the replies running here.

    Every worker needs its own (a starting process ends the replies still leased to
    its id), so under ``--workers N`` Sanic's worker name (stable across restarts of
    that worker) is appended to ``SANIC_CHAT_NODE_ID``. Without a configured id each
    process makes a random one, and its orphans are found when their leases lapse.
    """
    base = settings.node_id or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    worker = os.environ.get("SANIC_WORKER_NAME")
    return f"{base}/{worker}" if worker else base


# -- security's ports -----------------------------------------------------------


def tickets_for(settings: Settings, redis: SharedPool | None) -> TicketStore:
    """One-time tickets: in the shared Redis (a ticket minted on one node is redeemed
    on any), else in this process."""
    from .security.tickets import MemoryTickets, RedisTickets

    if redis is not None:
        prefix = f"{settings.bus_prefix}:sec"
        return RedisTickets(redis, ttl_s=settings.ticket_ttl_s, prefix=prefix)
    return MemoryTickets(ttl_s=settings.ticket_ttl_s)


def rate_limiter_for(
    limit: RateLimit | None, redis: SharedPool | None, prefix: str
) -> RateLimiter | None:
    """One per-user rate: in the shared Redis (every worker and node counts together),
    else in this process; None without a limit."""
    from .security.ratelimit import LocalRateLimiter, RedisRateLimiter

    if limit is None:
        return None
    if redis is not None:
        return RedisRateLimiter(redis, limit.count, limit.period_s, prefix=prefix)
    return LocalRateLimiter(limit.count, limit.period_s)


def security_for(
    settings: Settings, redis: SharedPool | None, ticket_paths: TicketPaths
) -> Security:
    """The security layer on its ports: tickets and both rate limiters from
    :func:`tickets_for` and :func:`rate_limiter_for`, ``?ticket=`` accepted on
    ``ticket_paths`` (the transports' own)."""
    from .security import Security

    prefix = f"{settings.bus_prefix}:sec"
    return Security(
        settings,
        tickets=tickets_for(settings, redis),
        ticket_paths=ticket_paths,
        rate=rate_limiter_for(settings.rate_limit, redis, prefix),
        frame_rate=rate_limiter_for(settings.frame_rate_limit, redis, f"{prefix}:frames"),
    )


# -- providers and metrics ------------------------------------------------------


def providers_http(settings: Settings) -> TransportFactory:
    """The providers' HTTP stack: ``SANIC_CHAT_UPSTREAM_HTTP``, except that with a
    proxy in the environment it is httpx's own transport, the one that honours it."""
    from .providers.upstream import upstream_transports

    proxies = urllib.request.getproxies()
    proxied = any(proxies.get(scheme) for scheme in ("http", "https", "all"))
    return upstream_transports(settings.upstream_http, proxied=proxied)


def catalog_for(settings: Settings) -> ModelCatalog:
    """The models file's catalog on :func:`providers_http`; the file's ``api_key_env``
    names are read from this process's environment. A wrong file raises here."""
    from .providers.catalog import load_catalog

    return load_catalog(settings.models_path, dict(os.environ), transports=providers_http(settings))


def metrics_for() -> Metrics:
    """The app's metrics; in prometheus-client's multiprocess mode (``--workers N``: the
    CLI sets ``PROMETHEUS_MULTIPROC_DIR``) they are written to that directory."""
    from .metrics import Metrics, multiprocess_dir

    return Metrics(multiprocess_dir=multiprocess_dir(os.environ))
