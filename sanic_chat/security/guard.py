"""The security layer, assembled from the settings and wired into the app:
the ``identify`` middleware's checks, the transports' hooks, CORS, the
tickets endpoint and log redaction."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sanic import Blueprint, Request, Sanic
from sanic.response import HTTPResponse, json
from sanic_ext import openapi

from ..api.schemas import Ticket, errors, json_response
from ..auth import accepts_ticket, build_authenticator
from ..config import RateLimit, Settings
from ..core.session import FrameGate
from ..transports.base import Authenticate, TransportContext
from .limits import ConnectionLimiter, build_gate
from .origins import OriginPolicy
from .ratelimit import LocalRateLimiter, RateLimiter, RedisRateLimiter, RedisSource
from .redaction import install_log_redaction
from .tickets import MemoryTickets, RedisTickets, TicketStore
from .websocket_frames import install as fail_websockets_on_bad_utf8

__all__ = ["Security"]

#: request headers a cross-origin page may send
_CORS_HEADERS = "authorization,content-type,last-event-id"


def _rate_limiter(
    limit: RateLimit | None, redis: RedisSource | None, prefix: str
) -> RateLimiter | None:
    """One per-user rate: in Redis when the bus is there (every worker and node
    shares it), else in this process."""
    if limit is None:
        return None
    if redis is not None:
        return RedisRateLimiter(redis, limit.count, limit.period_s, prefix=prefix)
    return LocalRateLimiter(limit.count, limit.period_s)


class Security:
    """Built before the app; :meth:`install` wires it in.

    ``redis`` is the process's shared Redis pool (built by the composition root; the
    tickets and both rate limiters draw on it). Without one, a Redis bus URL gives
    each of them a pool of its own."""

    def __init__(self, settings: Settings, *, redis: RedisSource | None = None) -> None:
        self.settings = settings
        # with a Redis bus, tickets and rates live in the same Redis: every
        # worker and node sees them
        if redis is None and settings.bus_url.startswith(("redis://", "rediss://")):
            redis = settings.bus_url
        self.tickets: TicketStore = (
            RedisTickets(redis, ttl_s=settings.ticket_ttl_s, prefix=f"{settings.bus_prefix}:sec")
            if redis is not None
            else MemoryTickets(ttl_s=settings.ticket_ttl_s)
        )
        prefix = f"{settings.bus_prefix}:sec"
        self.rate = _rate_limiter(settings.rate_limit, redis, prefix)
        self.frame_rate = _rate_limiter(settings.frame_rate_limit, redis, f"{prefix}:frames")
        self._limiters = [r for r in (self.rate, self.frame_rate) if r is not None]
        self.authenticate: Authenticate = build_authenticator(settings, self.tickets)
        self.origins = OriginPolicy(settings.allowed_origins, check_host=settings.auth == "none")
        self.connections = ConnectionLimiter(
            settings.max_connections_per_user, max_total=settings.max_connections
        )
        self.gate: FrameGate = build_gate(
            self.rate, log_content=settings.log_content, frame_rate=self.frame_rate
        )

    # ------------------------------------------------------------------ wiring

    def configure_cors(self, config: Any) -> None:
        """sanic-ext's CORS from the allowed origins; call before ``Extend(app)``.
        With none listed only the server's own pages call it, which needs no CORS."""
        origins = self.origins.cors_origins
        config.CORS = bool(origins)
        config.CORS_ORIGINS = "*" if origins == ["*"] else origins
        config.CORS_ALLOW_HEADERS = _CORS_HEADERS
        config.CORS_METHODS = "GET,POST,DELETE,OPTIONS"
        config.CORS_EXPOSE_HEADERS = "retry-after"
        config.CORS_SUPPORTS_CREDENTIALS = False  # bearer tokens, never cookies
        config.CORS_ALWAYS_SEND = False
        config.CORS_MAX_AGE = 600

    def install(self, app: Sanic[Any, Any], context: TransportContext) -> None:
        context.gate = self.gate
        context.on_connect = self.connections.connected
        context.on_disconnect = self.connections.disconnected
        app.blueprint(self.tickets_blueprint())
        install_log_redaction()
        fail_websockets_on_bad_utf8()  # a Sanic gap: see websocket_frames.py

        @app.before_server_start
        async def start_security(app: Sanic[Any, Any]) -> None:
            install_log_redaction()  # Sanic has set up its logging by now
            await self.tickets.start()
            for limiter in self._limiters:
                await limiter.start()

        @app.after_server_stop
        async def stop_security(app: Sanic[Any, Any]) -> None:
            await self.tickets.close()
            for limiter in self._limiters:
                await limiter.close()

    # ------------------------------------------------------------------ per request

    async def identify(self, request: Request) -> None:
        """Run by the ``identify`` middleware on every non-public request:
        origin and host, then the user, then (for streams) a connection slot."""
        self.origins.check(request.headers.get("origin"), request.headers.get("host"))
        if request.method == "OPTIONS":
            return  # a CORS preflight carries no credentials; sanic-ext answers it
        user = await self.authenticate(request)
        request.ctx.user = user
        if accepts_ticket(request):  # the long-lived ones: /ws and the SSE streams
            self.connections.reserve(user)

    def tickets_blueprint(self) -> Blueprint:
        bp = Blueprint("tickets")
        tickets = self.tickets

        @bp.post("/api/v1/tickets")
        @openapi.summary("Mint a one-time ticket for /ws or an SSE stream")
        @openapi.description(
            "Browsers cannot set `Authorization` on a WebSocket or an `EventSource`: "
            "they call this (authenticated) and pass the ticket as `?ticket=`. "
            "It works once, for this user, until it expires."
        )
        @errors(401, 429)
        @json_response(201, Ticket, "a ticket")
        async def mint_ticket(request: Request) -> HTTPResponse:
            ticket = await tickets.mint(request.ctx.user)
            expires = datetime.now(UTC) + timedelta(seconds=ticket.expires_in_s)
            return json(
                {
                    "ticket": ticket.value,
                    "expires_in": ticket.expires_in_s,
                    "expires_at": expires.isoformat().replace("+00:00", "Z"),
                },
                status=201,
                headers={"Cache-Control": "no-store"},
            )

        return bp
