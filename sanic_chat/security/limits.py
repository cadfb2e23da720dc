"""Limits on connections, and the gate every client frame passes.

Connections (WebSocket and SSE streams) are counted per process: all of them
(``max_total``, always on) and per user (``max_per_user``; None: no per-user
cap). The ``identify`` middleware *reserves* a slot before the upgrade, so the
extra connection is refused with 429 over plain HTTP; the transport turns the
reservation into a connection when its handler starts (``on_connect``) and
gives it back when it ends (``on_disconnect``). A reservation whose request
never reached its handler (a failed handshake, a 404 stream) lapses after
``reservation_s``, so nothing leaks.
"""

from __future__ import annotations

import logging
import time
from collections import deque

from ..core.errors import RateLimited
from ..core.events import (
    ClientFrame,
    ConversationSubscribe,
    GenerationCancel,
    GenerationResume,
    MessageCreate,
)
from ..core.session import FrameGate
from .ratelimit import RateLimiter

__all__ = ["ConnectionLimiter", "build_gate"]

log = logging.getLogger(__name__)


#: at most one "process is full" warning per this many seconds
_FULL_WARNING_EVERY_S = 60.0


class ConnectionLimiter:
    def __init__(
        self,
        max_per_user: int | None,
        *,
        max_total: int | None = None,
        reservation_s: float = 10.0,
    ) -> None:
        self.max_per_user = max_per_user
        self.max_total = max_total
        self.reservation_s = reservation_s
        self._active: dict[str, int] = {}
        self._pending: dict[str, deque[float]] = {}
        #: every user's reservations together, for the per-process cap; it may
        #: briefly disagree with the per-user queues about which reservation
        #: lapsed, never about how many stay (both lapse after reservation_s)
        self._pending_all: deque[float] = deque()
        self._active_all = 0
        self._sweep_at = 1024
        self._warned_at: float | None = None

    def reserve(self, user: str) -> None:
        """Before the upgrade: raise :class:`RateLimited` if this process or
        ``user`` is at its limit."""
        now = time.monotonic()
        if self.max_total is not None:
            pending_all = self._pending_all
            while pending_all and now - pending_all[0] > self.reservation_s:
                pending_all.popleft()
            if self._active_all + len(pending_all) >= self.max_total:
                self._warn_full(now)
                raise RateLimited(
                    f"the server is at its limit of {self.max_total} open connections: "
                    "retry in a moment",
                    retry_after=1.0,
                )
        pending = self._pending.get(user)
        if pending is not None:
            while pending and now - pending[0] > self.reservation_s:
                pending.popleft()
        in_use = self._active.get(user, 0) + (len(pending) if pending else 0)
        if self.max_per_user is not None and in_use >= self.max_per_user:
            raise RateLimited(
                f"at most {self.max_per_user} open connections per user: close one first",
                retry_after=1.0,
            )
        self._pending.setdefault(user, deque()).append(now)
        if self.max_total is not None:
            self._pending_all.append(now)
        if len(self._pending) > self._sweep_at:
            # users whose reservations all lapsed
            self._pending = {
                u: times
                for u, times in self._pending.items()
                if times and now - times[-1] <= self.reservation_s
            }
            self._sweep_at = max(1024, 2 * len(self._pending))

    def connected(self, user: str) -> None:
        pending = self._pending.get(user)
        if pending:
            pending.popleft()
            if not pending:
                del self._pending[user]
        if self._pending_all:
            self._pending_all.popleft()
        self._active[user] = self._active.get(user, 0) + 1
        self._active_all += 1

    def disconnected(self, user: str) -> None:
        left = self._active.get(user, 0) - 1
        if left > 0:
            self._active[user] = left
        else:
            self._active.pop(user, None)
        self._active_all = max(0, self._active_all - 1)

    def _warn_full(self, now: float) -> None:
        if self._warned_at is None or now - self._warned_at >= _FULL_WARNING_EVERY_S:
            self._warned_at = now
            log.warning(
                "connection refused: this process has its maximum of %d open connections "
                "(SANIC_CHAT_MAX_CONNECTIONS); more workers or nodes serve more",
                self.max_total,
            )

    def total(self) -> int:
        """Open connections in this process."""
        return self._active_all

    def active(self, user: str) -> int:
        return self._active.get(user, 0)


#: frames that make the server read the database for the user: they pay the
#: frame rate (``ping`` and ``conversation.unsubscribe`` cost nothing and are free)
_READING_FRAMES = (ConversationSubscribe, GenerationResume, GenerationCancel)


def build_gate(
    rate: RateLimiter | None,
    *,
    log_content: bool = False,
    frame_rate: RateLimiter | None = None,
) -> FrameGate:
    """The check run before each decoded client frame, on every transport.

    ``message.create`` pays one unit of the user's message rate (what it
    holds was validated by the decoder, ``core.events``, NUL included).
    Subscribing, resuming and cancelling pay one unit of the user's frame
    rate: each costs a database read, and a flood of them from one user's
    connections would otherwise take the database from everyone else.
    """

    async def gate(user: str, frame: ClientFrame) -> None:
        if log.isEnabledFor(logging.DEBUG):
            if log_content and isinstance(frame, MessageCreate):
                log.debug("frame from %s: %s content=%r", user, frame.type, frame.content)
            else:
                log.debug("frame from %s: %s", user, frame.type)
        if not isinstance(frame, MessageCreate):
            if frame_rate is not None and isinstance(frame, _READING_FRAMES):
                wait = await frame_rate.acquire(user)
                if wait > 0:
                    # the session adds the frame's generation or conversation id as ref
                    raise RateLimited(
                        f"too many {frame.type} frames: retry in {wait:.1f} s", retry_after=wait
                    )
            return
        if rate is not None:
            wait = await rate.acquire(user)
            if wait > 0:
                raise RateLimited(
                    f"too many messages: retry in {wait:.1f} s",
                    ref=frame.client_id,
                    retry_after=wait,
                )

    return gate
