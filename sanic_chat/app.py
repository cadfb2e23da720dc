"""The composition root: the one module that wires core, store, bus, providers,
security, transports and the HTTP API together. Nothing else imports from all of them.

The adapters (store, bus, the shared Redis pool, tickets, rate limiters, the
providers' catalog and HTTP stack) are built by :mod:`.wiring` from the settings;
this module assembles them with the core into the Sanic app."""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
import uuid
from pathlib import Path
from typing import Any

from sanic import Request, Sanic
from sanic.response import HTTPResponse, file, json
from sanic_ext import Extend, openapi

from .api.conversations import conversations_blueprint
from .api.docs import configure_api_docs
from .api.errors import install_error_handlers
from .api.operations import operations_blueprint
from .config import Settings
from .core.service import ChatService, ServiceHooks
from .core.settings import CoreSettings
from .logging import bind_request
from .metrics import watch_event_loop_lag
from .providers.catalog import ModelCatalog
from .runtime import tune_garbage_collector
from .security.handshakes import install as install_handshake_limits
from .security.handshakes import unparsed
from .security.identity import TicketPaths
from .startup import start_bus
from .transports.base import TransportContext, TransportModule
from .wiring import (
    catalog_for,
    metrics_for,
    node_id_for,
    open_bus_for,
    open_store_for,
    providers_http,
    security_for,
    shared_redis_for,
    sole_process,
)

log = logging.getLogger(__name__)

# providers_http and shared_redis_for are wiring's; named here for the tests that
# check the app builds them so
__all__ = ["create_app", "providers_http", "shared_redis_for"]

WEB_DIR = Path(__file__).parent / "web"

#: requests that need no user: the page, its assets, health and metrics
_PUBLIC_PREFIXES = ("/healthz", "/readyz", "/metrics", "/static", "/docs", "/favicon")


def create_app(settings: Settings | None = None, *, name: str | None = None) -> Sanic[Any, Any]:
    settings = settings or Settings.from_env()
    app: Sanic[Any, Any] = Sanic(name or f"sanic_chat_{uuid.uuid4().hex[:8]}")
    redis = shared_redis_for(settings)
    if redis is not None:

        @app.after_server_stop  # registered first, so it runs last: after all its users
        async def close_redis(app: Sanic[Any, Any]) -> None:
            await redis.close()

    # each transport declares the GET routes where a one-time ?ticket= stands in for
    # Authorization; the security layer accepts tickets on their union only
    transports: list[TransportModule] = [
        importlib.import_module(f"sanic_chat.transports.{name}") for name in settings.transports
    ]
    ticket_paths = TicketPaths(path for module in transports for path in module.TICKET_PATHS)
    # auth, tickets, origins, rate and connection limits (docs/security.md), on the
    # ticket store and rate limiters wiring built (in the shared Redis when there is one)
    security = security_for(settings, redis, ticket_paths)
    app.config.REQUEST_MAX_SIZE = settings.max_body_bytes
    app.config.WEBSOCKET_MAX_SIZE = settings.max_frame_bytes
    app.config.WEBSOCKET_PING_INTERVAL = 20
    app.config.WEBSOCKET_PING_TIMEOUT = 20
    app.config.GRACEFUL_SHUTDOWN_TIMEOUT = settings.drain_timeout_s + 5
    configure_api_docs(app)  # /docs: OpenAPI and a Swagger UI served from here
    security.configure_cors(app.config)  # before Extend: it reads the CORS settings
    Extend(app)
    app.ctx.settings = settings
    metrics = metrics_for()
    app.ctx.metrics = metrics
    node_id = node_id_for(settings)
    app.ctx.node_id = node_id
    # a wrong models file fails here, before anything listens
    catalog: ModelCatalog = catalog_for(settings)
    app.ctx.catalog = catalog
    context = TransportContext(
        authenticate=security.authenticate,
        metrics=metrics,
        heartbeat_s=settings.heartbeat_s,
        max_frame_bytes=settings.max_frame_bytes,
        idle_timeout_s=settings.idle_timeout_s,
        # every frame through the gate; a connection slot per user while one is open
        gate=security.gate,
        on_connect=security.connections.connected,
        on_disconnect=security.connections.disconnected,
    )
    app.ctx.transport_context = context
    security.install(app)  # POST /api/v1/tickets, log redaction, its ports' start and close
    # slowloris: a deadline for each request head, a cap on connections still sending one
    install_handshake_limits(
        app, timeout_s=settings.header_timeout_s, max_pending=settings.max_pending_handshakes
    )
    install_error_handlers(app)
    for module in transports:
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
            sole_process=sole_process(settings),
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
