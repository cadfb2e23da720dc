"""What every transport gets: the one small interface through which it drives
the core. A transport module exposes ``register(app, context)`` and nothing
else; which transports are on is configuration (``SANIC_CHAT_TRANSPORTS``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..core.service import ChatService
from ..core.session import ChatSession, FrameGate
from ..metrics import Metrics

__all__ = ["Authenticate", "TransportContext", "TransportModule"]

#: resolves the user of an HTTP request or WebSocket upgrade; raises Unauthorized
Authenticate = Callable[[Any], Awaitable[str]]


#: the most the coalescing window grows to, in multiples of ``coalesce_s``
#: (40 ms by default: at most 100 ms, still ten updates a second)
MAX_LINGER_FACTOR = 2.5


@dataclass(slots=True)
class TransportContext:
    """Built with the app; ``service`` is set when the server starts (routes
    are registered before that and read it per request)."""

    authenticate: Authenticate
    metrics: Metrics
    heartbeat_s: float = 15.0
    coalesce_s: float = 0.04
    coalesce_above: int = 32
    max_frame_bytes: int = 256 * 1024
    idle_timeout_s: float = 300.0
    gate: FrameGate | None = None
    #: called when a user opens/closes a connection; may raise to refuse one
    on_connect: Callable[[str], None] | None = None
    on_disconnect: Callable[[str], None] | None = None
    service: ChatService = field(init=False)

    def linger_s(self) -> float:
        """How long a connection's writer lets flowing text gather before it
        sends: only while this process is busy with many replies, and longer
        the busier it is.

        A frame costs a write system call (on loopback, the receiver's TCP work
        too) and a trip through the WebSocket stack: once the event loop is the
        bottleneck, fewer frames is what keeps first chunks fast. The window
        is ``coalesce_s`` at ``coalesce_above`` running replies and grows in
        proportion (twice as long at twice as many), up to
        :data:`MAX_LINGER_FACTOR` times ``coalesce_s``."""
        if self.coalesce_s <= 0:
            return 0.0
        running = len(self.service.running)
        if running < self.coalesce_above:
            return 0.0
        factor = running / self.coalesce_above if self.coalesce_above > 0 else 1.0
        return self.coalesce_s * min(MAX_LINGER_FACTOR, max(1.0, factor))

    def open_session(self, user: str) -> ChatSession:
        return ChatSession(self.service, user, gate=self.gate)


class TransportModule(Protocol):
    def register(self, app: Any, context: TransportContext) -> None: ...
