"""One-time tickets: how a browser, which cannot set ``Authorization`` on a
WebSocket or an EventSource, proves who it is.

``POST /api/v1/tickets`` (authenticated) mints an opaque random ticket bound to
the user; ``?ticket=`` on ``/ws`` or an SSE endpoint redeems it. A ticket is
good once and for ``ttl_s`` seconds. Only its SHA-256 is stored, so a dump of
the store holds nothing usable.

Two stores, one contract: :class:`MemoryTickets` for one process, and
:class:`RedisTickets` (the bus's Redis) for many workers and nodes -- a ticket
minted on one node is redeemed on whichever node the upgrade reaches, and
``GETDEL`` makes redeeming atomic, so two nodes can never both accept it.

Minting is capped per user (``max_per_window`` per ``ttl_s``), so an
authenticated client cannot fill the store.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from typing import Protocol

from ..core.errors import RateLimited, Unavailable
from .ratelimit import RedisScriptStore, RedisSource

__all__ = ["MemoryTickets", "RedisTickets", "Ticket", "TicketStore"]

#: what a minted ticket looks like; anything else is refused without a lookup
_TICKET_SHAPE = re.compile(r"[A-Za-z0-9_-]{20,128}")


@dataclass(frozen=True, slots=True)
class Ticket:
    value: str
    expires_in_s: float


class TicketStore(Protocol):
    async def mint(self, user: str) -> Ticket:
        """A new ticket for ``user``; :class:`RateLimited` past the per-user cap."""
        ...

    async def redeem(self, ticket: str) -> str | None:
        """The user the ticket was minted for, exactly once; None if it is
        unknown, used or expired."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


def _digest(ticket: str) -> str:
    return hashlib.sha256(ticket.encode()).hexdigest()


def _new_ticket() -> str:
    return secrets.token_urlsafe(32)


class MemoryTickets:
    def __init__(self, *, ttl_s: float = 60.0, max_per_window: int = 60) -> None:
        self.ttl_s = ttl_s
        self.max_per_window = max_per_window
        # insertion order is expiry order (one ttl for all): expired ones are
        # swept from the front
        self._tickets: dict[str, tuple[str, float]] = {}
        #: user -> (window start, tickets minted in it)
        self._windows: dict[str, tuple[float, int]] = {}
        self._sweep_at = 1024

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._tickets.clear()
        self._windows.clear()

    async def mint(self, user: str) -> Ticket:
        now = time.monotonic()
        self._sweep(now)
        start, count = self._windows.get(user, (now, 0))
        if now - start >= self.ttl_s:
            start, count = now, 0
        if count >= self.max_per_window:
            raise RateLimited(
                "too many tickets: use the ones you have", retry_after=start + self.ttl_s - now
            )
        self._windows[user] = (start, count + 1)
        ticket = _new_ticket()
        self._tickets[_digest(ticket)] = (user, now + self.ttl_s)
        return Ticket(ticket, self.ttl_s)

    async def redeem(self, ticket: str) -> str | None:
        if not _TICKET_SHAPE.fullmatch(ticket):
            return None
        entry = self._tickets.pop(_digest(ticket), None)
        if entry is None:
            return None
        user, expires = entry
        return user if time.monotonic() < expires else None

    def _sweep(self, now: float) -> None:
        while self._tickets:
            digest, (_, expires) = next(iter(self._tickets.items()))
            if expires > now:
                break
            del self._tickets[digest]
        if len(self._windows) > self._sweep_at:
            self._windows = {
                user: window
                for user, window in self._windows.items()
                if now - window[0] < self.ttl_s
            }
            self._sweep_at = max(1024, 2 * len(self._windows))


# KEYS: ticket key, per-user window key. ARGV: user, ttl ms, cap.
# Returns 0 when minted, else the ms until the user's window reopens.
_MINT = """
local n = redis.call('INCR', KEYS[2])
if n == 1 then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
if n > tonumber(ARGV[3]) then
  local left = redis.call('PTTL', KEYS[2])
  if left <= 0 then
    redis.call('PEXPIRE', KEYS[2], ARGV[2])
    left = tonumber(ARGV[2])
  end
  return left
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 0
"""


class RedisTickets(RedisScriptStore):
    """Tickets in Redis: ``{prefix}:ticket:{sha256}`` -> user, with a TTL;
    redeemed with ``GETDEL``. ``redis`` is the process's shared pool (or a URL for a
    pool of its own): a burst of mints waits for a free connection, never a 503 while
    Redis is healthy."""

    LUA = _MINT
    TIMEOUT_S = 5.0

    def __init__(
        self,
        redis: RedisSource,
        *,
        ttl_s: float = 60.0,
        max_per_window: int = 60,
        prefix: str = "sanic-chat:sec",
    ) -> None:
        super().__init__(redis, prefix)
        self.ttl_s = ttl_s
        self.max_per_window = max_per_window

    async def mint(self, user: str) -> Ticket:
        from redis.exceptions import RedisError

        ticket = _new_ticket()
        ttl_ms = int(self.ttl_s * 1000)
        keys = [f"{self.prefix}:ticket:{_digest(ticket)}", f"{self.prefix}:tickets-of:{user}"]
        try:
            left = await self._script(keys=keys, args=[user, ttl_ms, self.max_per_window])
        except (RedisError, OSError) as exc:
            raise Unavailable(f"cannot store the ticket ({type(exc).__name__})") from None
        if int(left) > 0:
            raise RateLimited(
                "too many tickets: use the ones you have", retry_after=int(left) / 1000
            )
        return Ticket(ticket, self.ttl_s)

    async def redeem(self, ticket: str) -> str | None:
        from redis.exceptions import RedisError

        if not _TICKET_SHAPE.fullmatch(ticket):
            return None
        try:
            user = await self._redis.getdel(f"{self.prefix}:ticket:{_digest(ticket)}")
        except (RedisError, OSError) as exc:
            raise Unavailable(f"cannot check the ticket ({type(exc).__name__})") from None
        return user.decode() if user is not None else None
