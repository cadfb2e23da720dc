"""What every transport gets: the one small interface through which it drives
the core. A transport module exposes ``register(app, context)`` and
``TICKET_PATHS`` (its GET routes on which a browser authenticates with a one-time
``?ticket=``; the composition root hands their union to the security layer) and
nothing else; which transports are on is configuration (``SANIC_CHAT_TRANSPORTS``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..core.doors import ChatOperations
from ..core.session import ChatSession, FrameGate
from ..metrics import Metrics
from ..security.identity import Authenticate

__all__ = ["TransportContext", "TransportModule"]


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
    #: Sanic route paths (GET) where ``?ticket=`` stands in for ``Authorization``
    TICKET_PATHS: tuple[str, ...]

    def register(self, app: Any, context: TransportContext) -> None: ...
