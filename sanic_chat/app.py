"""The composition root: the one module that wires core, store, bus, providers,
transports and the HTTP API together. Nothing else imports from all of them."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import socket
import time
import urllib.request
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sanic import Request, Sanic
from sanic.response import HTTPResponse, file, json
from sanic_ext import Extend, openapi

from .api.conversations import conversations_blueprint
from .api.docs import configure_api_docs
from .api.errors import install_error_handlers
from .api.operations import operations_blueprint
from .bus.pool import SharedPool
from .bus.url import open_bus
from .config import Settings
from .core.ports import Bus, MessageStore
from .core.service import ChatService, ServiceHooks
from .core.settings import CoreSettings
from .logging import bind_request
from .metrics import Metrics, watch_event_loop_lag
from .providers.catalog import ModelCatalog, load_catalog
from .providers.upstream import TransportFactory, upstream_transports
from .runtime import tune_garbage_collector
from .security import Security
from .security.handshakes import install as install_handshake_limits
from .security.handshakes import unparsed
from .startup import (
    StartupError,
    prepare_sqlite,
    redact_url,
    start_bus,
    unusable_postgres,
    unusable_sqlite,
)
from .transports.base import TransportContext

if TYPE_CHECKING:
    from .store.sql import SqlMessageStore

log = logging.getLogger(__name__)

__all__ = ["create_app"]

WEB_DIR = Path(__file__).parent / "web"

#: requests that need no user: the page, its assets, health and metrics
_PUBLIC_PREFIXES = ("/healthz", "/readyz", "/metrics", "/static", "/docs", "/favicon")


async def open_store_for(settings: Settings) -> MessageStore:
    """The store, its schema up to date if ``auto_migrate``. Raises
    :class:`~sanic_chat.startup.StartupError` (one line) when the SQLite file
    cannot be used."""
    from .store import open_store

    sqlite_path = prepare_sqlite(settings) if settings.database_url.startswith("sqlite:") else None
    store = await open_store(settings.database_url)
    if sqlite_path is None:
        try:
            await _prepare_postgres(store, settings)
        except BaseException:
            await store.close()
            raise
        return store
    if settings.auto_migrate:
        try:
            # the embedded default keeps its own schema up to date
            await store.migrate()
        except BaseException as exc:
            await store.close()  # its connections' threads would keep the process alive
            if sqlite_path is not None and isinstance(exc, Exception):
                raise unusable_sqlite(sqlite_path, exc) from exc
            raise
    return store


async def _prepare_postgres(store: SqlMessageStore, settings: Settings) -> None:
    """Migrate the PostgreSQL schema (``auto_migrate``: safe with every worker of
    every node starting at once, see ``SqlMessageStore.migrate``) or check that it
    is there. Raises :class:`~sanic_chat.startup.StartupError` (one line) when the
    database cannot be reached or used, or has no schema and may not make it: a
    node does not start on a database it cannot use (once started, it rides out
    an outage: ``/readyz`` says 503 with the cause until the database is back)."""
    try:
        if settings.auto_migrate:
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


def open_bus_for(
    settings: Settings, node_id: str | None = None, redis: SharedPool | None = None
) -> Bus:
    return open_bus(
        settings.bus_url,
        tail_ttl_s=settings.tail_ttl_s,
        node_id=node_id,
        prefix=settings.bus_prefix,
        pool=redis,
    )


def shared_redis_for(settings: Settings) -> SharedPool | None:
    """The process's one Redis pool (with a Redis bus): the bus's tail reads, the tickets
    and the rate limiters share it, and it waits for a free connection when busy."""
    if not settings.bus_url.startswith(("redis://", "rediss://")):
        return None
    name = f"{settings.bus_prefix}:{socket.gethostname()}-{os.getpid()}:pool"
    return SharedPool(settings.bus_url.strip(), client_name=name.replace(" ", "_"))


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


def providers_http(settings: Settings) -> TransportFactory:
    """The providers' HTTP stack: ``SANIC_CHAT_UPSTREAM_HTTP``, except that with a
    proxy in the environment it is httpx's own transport, the one that honours it."""
    proxies = urllib.request.getproxies()
    proxied = any(proxies.get(scheme) for scheme in ("http", "https", "all"))
    return upstream_transports(settings.upstream_http, proxied=proxied)


def create_app(settings: Settings | None = None, *, name: str | None = None) -> Sanic[Any, Any]:
    settings = settings or Settings.from_env()
    app: Sanic[Any, Any] = Sanic(name or f"sanic_chat_{uuid.uuid4().hex[:8]}")
    redis = shared_redis_for(settings)
    if redis is not None:

        @app.after_server_stop  # registered first, so it runs last: after all its users
        async def close_redis(app: Sanic[Any, Any]) -> None:
            await redis.close()

    # auth, tickets, origins, rate and connection limits (docs/security.md)
    security = Security(settings, redis=redis)
    app.config.REQUEST_MAX_SIZE = settings.max_body_bytes
    app.config.WEBSOCKET_MAX_SIZE = settings.max_frame_bytes
    app.config.WEBSOCKET_PING_INTERVAL = 20
    app.config.WEBSOCKET_PING_TIMEOUT = 20
    app.config.GRACEFUL_SHUTDOWN_TIMEOUT = settings.drain_timeout_s + 5
    configure_api_docs(app)  # /docs: OpenAPI and a Swagger UI served from here
    security.configure_cors(app.config)  # before Extend: it reads the CORS settings
    Extend(app)
    app.ctx.settings = settings
    metrics = Metrics()
    app.ctx.metrics = metrics
    node_id = node_id_for(settings)
    app.ctx.node_id = node_id
    authenticate = security.authenticate
    # a wrong models file fails here, before anything listens
    catalog: ModelCatalog = load_catalog(
        settings.models_path, dict(os.environ), transports=providers_http(settings)
    )
    app.ctx.catalog = catalog
    context = TransportContext(
        authenticate=authenticate,
        metrics=metrics,
        heartbeat_s=settings.heartbeat_s,
        max_frame_bytes=settings.max_frame_bytes,
        idle_timeout_s=settings.idle_timeout_s,
    )
    app.ctx.transport_context = context
    security.install(app, context)  # the frame gate, connection hooks, POST /api/v1/tickets
    # slowloris: a deadline for each request head, a cap on connections still sending one
    install_handshake_limits(
        app, timeout_s=settings.header_timeout_s, max_pending=settings.max_pending_handshakes
    )
    install_error_handlers(app)
    for transport in settings.transports:
        module = importlib.import_module(f"sanic_chat.transports.{transport}")
        module.register(app, context)
    # REST and operations reach the core through their doors, there once it started
    app.blueprint(conversations_blueprint(lambda: app.ctx.service))
    app.blueprint(operations_blueprint(context, catalog.describe, lambda: app.ctx.service))

    @app.before_server_start
    async def open_everything(app: Sanic[Any, Any]) -> None:
        store = await open_store_for(settings)
        bus = open_bus_for(settings, node_id, redis)
        try:
            await start_bus(bus, settings.bus_url)
        except BaseException:
            # the store's connections run in threads of their own: left open, the
            # process would stay alive after Sanic gave up, neither serving nor exiting
            await store.close()
            raise
        hooks = ServiceHooks(
            first_chunk=metrics.first_chunk_seconds.observe,
            generation_finished=lambda status, s: metrics.reply_seconds.labels(status).observe(s),
            message_persisted=metrics.persist_seconds.observe,
            provider_error=lambda code: metrics.provider_errors.labels(code).inc(),
        )
        service = ChatService(
            store=store,
            bus=bus,
            models=catalog,
            node_id=node_id,
            settings=CoreSettings(
                checkpoint_interval_s=settings.checkpoint_interval_s,
                history_max_chars=settings.history_max_chars,
                system_prompt=settings.system_prompt,
                lease_s=settings.lease_s,
                max_content_chars=settings.max_content_chars,
                outbox_max_chars=settings.outbox_max_chars,
                outbox_max_frames=settings.outbox_max_frames,
                coalesce_s=settings.coalesce_ms / 1000,
                coalesce_above=settings.coalesce_above,
            ),
            hooks=hooks,
            # the embedded default (SQLite + in-memory bus) is one process by
            # construction: it may end every reply left streaming at start-up
            sole_process=settings.database_url.startswith("sqlite")
            and settings.bus_url.startswith("memory://"),
            max_running_replies_per_user=settings.max_running_replies_per_user,
        )
        await service.start()
        app.ctx.store, app.ctx.bus = store, bus  # built here, closed here
        app.ctx.service = service
        context.chat = service
        tune_garbage_collector(settings.gc_threshold)
        app.ctx.loop_lag = asyncio.get_running_loop().create_task(
            watch_event_loop_lag(metrics), name="event-loop-lag"
        )

    @app.before_server_stop
    async def drain(app: Sanic[Any, Any]) -> None:
        # Sanic runs this after SIGTERM but BEFORE it closes its listening socket,
        # with every connection still served: new requests are refused by ``enter``
        # (503) while the running replies stream on. The transports' own
        # before_server_stop listeners run after this one (reverse order of
        # registration) and close their connections (WebSocket: 1001).
        service: ChatService | None = getattr(app.ctx, "service", None)
        if service is not None:
            started = time.monotonic()
            await service.drain(settings.drain_timeout_s)
            log.info("drained in %.2f s", time.monotonic() - started)

    @app.after_server_stop
    async def close_everything(app: Sanic[Any, Any]) -> None:
        lag_watch: asyncio.Task[None] | None = getattr(app.ctx, "loop_lag", None)
        if lag_watch is not None:
            lag_watch.cancel()
        service: ChatService | None = getattr(app.ctx, "service", None)
        if service is None:
            return
        await service.close()  # what the core runs; then the adapters built above
        await app.ctx.bus.close()
        await app.ctx.store.close()
        await app.ctx.catalog.aclose()

    @app.on_request
    async def enter(request: Request) -> HTTPResponse | None:
        bind_request(request)  # request and connection ids for the logs
        service: ChatService | None = getattr(app.ctx, "service", None)
        if (
            service is not None
            and not service.accepting
            and not request.path.startswith(_PUBLIC_PREFIXES)
        ):
            # draining (SIGTERM): Sanic still accepts connections until the drain
            # ends; new work is turned away so the load balancer retries elsewhere
            return json(
                {"error": {"code": "unavailable", "message": "the server is shutting down"}},
                status=503,
                headers={"Retry-After": "1", "Connection": "close"},
            )
        return None

    @app.on_request
    async def identify(request: Request) -> None:
        path = request.path
        if path == "/" or path.startswith(_PUBLIC_PREFIXES):
            return
        if unparsed(request):
            return  # answering an error from before the head was read (408, 413, 400)
        await security.identify(request)  # origin/host, user, connection slot

    @app.get("/")
    @openapi.exclude()  # the page, not part of the API
    async def index(request: Request) -> HTTPResponse:
        return await file(WEB_DIR / "index.html", mime_type="text/html; charset=utf-8")

    app.static("/static", WEB_DIR, name="web_static")

    @app.on_response
    async def revalidate_page(request: Request, response: HTTPResponse) -> None:
        # the page and its modules change with each release: browsers may keep
        # them but must revalidate (Sanic answers 304 from Last-Modified)
        if request.path == "/" or request.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-cache")

    return app
