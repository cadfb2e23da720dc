"""What every transport gets: the one small interface through which it drives
the core. A transport module exposes ``register(app, context)`` and nothing
else; which transports are on is configuration (``SANIC_CHAT_TRANSPORTS``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..core.doors import ChatOperations
from ..core.session import ChatSession, FrameGate
from ..metrics import Metrics

__all__ = ["Authenticate", "TransportContext", "TransportModule"]

#: resolves the user of an HTTP request or WebSocket upgrade; raises Unauthorized
Authenticate = Callable[[Any], Awaitable[str]]


@dataclass(slots=True)
class TransportContext:
    """Built with the app; ``chat`` (the core's door for transports) is set
    when the server starts (routes are registered before that and read it per
    request)."""

    authenticate: Authenticate
    metrics: Metrics
    heartbeat_s: float = 15.0
    max_frame_bytes: int = 256 * 1024
    idle_timeout_s: float = 300.0
    gate: FrameGate | None = None
    #: called when a user opens/closes a connection; may raise to refuse one
    on_connect: Callable[[str], None] | None = None
    on_disconnect: Callable[[str], None] | None = None
    chat: ChatOperations = field(init=False)

    def open_session(self, user: str) -> ChatSession:
        """A session for a connection (or one HTTP request) of ``user``, gated."""
        return self.chat.open_session(user, gate=self.gate)


class TransportModule(Protocol):
    def register(self, app: Any, context: TransportContext) -> None: ...
