"""The security layer, assembled from ready ports and wired into the app: the
``identify`` middleware's checks, the frame gate and connection hooks the
composition root hands the transports, CORS, the tickets endpoint and log
redaction.

It chooses no implementation: the ticket store and the rate limiters (in Redis
with a Redis bus, else in this process) are built by the composition root
(``sanic_chat/wiring.py``), and the ticket paths come from the transports."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sanic import Blueprint, Request, Sanic
from sanic.response import HTTPResponse, json
from sanic_ext import openapi

from ..api.schemas import Ticket, errors, json_response
from ..config import Settings
from ..core.session import FrameGate
from .identity import Authenticate, TicketPaths, build_authenticator
from .limits import ConnectionLimiter, build_gate
from .origins import OriginPolicy
from .ratelimit import RateLimiter
from .redaction import install_log_redaction
from .tickets import TicketStore
from .websocket_frames import install as fail_websockets_on_bad_utf8

__all__ = ["Security"]

#: request headers a cross-origin page may send
_CORS_HEADERS = "authorization,content-type,last-event-id"


class Security:
    """Built before the app from ready ports; :meth:`install` wires it in.

    ``tickets`` redeems and mints ``?ticket=`` on ``ticket_paths`` (the union of the
    transports' ``TICKET_PATHS``); ``rate`` caps a user's requests and messages,
    ``frame_rate`` every frame (either may be None: no cap). The Security starts and
    closes them with the server."""

    def __init__(
        self,
        settings: Settings,
        *,
        tickets: TicketStore,
        ticket_paths: TicketPaths,
        rate: RateLimiter | None = None,
        frame_rate: RateLimiter | None = None,
    ) -> None:
        self.settings = settings
        self.tickets = tickets
        self.ticket_paths = ticket_paths
        self.rate = rate
        self.frame_rate = frame_rate
        self._limiters = [r for r in (self.rate, self.frame_rate) if r is not None]
        self.authenticate: Authenticate = build_authenticator(settings, tickets, ticket_paths)
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

    def install(self, app: Sanic[Any, Any]) -> None:
        """The tickets endpoint, log redaction, and the ports' start and close with the
        server. (The transports get :attr:`gate` and the :attr:`connections` hooks from
        the composition root, with their context.)"""
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
        if self.ticket_paths.accepts(request):  # the long-lived ones: /ws, the SSE streams
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
