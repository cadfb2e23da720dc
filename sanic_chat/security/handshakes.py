"""A deadline and a cap for connections that have not sent their request head
(slowloris), and a 4xx instead of 401 for a request that failed before its head
was read: the policy. Its hooks into Sanic's HTTP protocol are in
:mod:`sanic_chat.sanic_internals` (the one module that touches Sanic's internals).

Upstream behaviour worked around (Sanic 25.12, ``sanic/server/protocols/http_protocol.py``
and ``sanic/http/http1.py``):

* ``REQUEST_TIMEOUT`` is measured from the *last chunk received*
  (``HttpProtocol.data_received`` resets ``_time``), so a client that sends one
  header line every few seconds holds its connection forever; a connection that
  sends nothing waits out ``KEEP_ALIVE_TIMEOUT`` (120 s). Nothing bounds how many
  such connections there are, and each holds a descriptor: at the common default
  of 1,024 descriptors, 1,100 of them refused every other client.
* A request that fails before its head is parsed (the timeout, a head over
  ``REQUEST_MAX_HEADER_SIZE``, a malformed request line) is answered through the
  app's request middleware with a stand-in request (method ``NONE``, no route,
  no headers), so authentication refused it with 401 before the real error.

What this module does, per process: each connection gets ``timeout_s`` from its
start to the end of its request head (a kept-alive connection: from the first
byte of its next request), however the bytes trickle; then a half-sent request
is answered 408 and a silent connection is closed, as Sanic does for its own
timeouts. At most ``max_pending`` connections may be waiting for their head:
past that the oldest is timed out at once, so a flood of half-open connections
churns through its own slots while a client that sends its head at once still
gets in.

Delete when Sanic bounds the whole request head in time and caps the
connections still sending one (then keep :func:`unparsed`'s caller: it is
harmless). ``tests/security/test_slowloris.py`` checks, gated on the Sanic
version, that the internals used here are still there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from sanic import Request, Sanic

from ..runtime import raise_open_files_limit
from ..sanic_internals import (
    between_requests,
    head_unfinished,
    time_out_request,
    watch_request_heads,
)

__all__ = ["DEFAULT_MAX_PENDING", "install", "pending_cap_for", "unparsed"]

log = logging.getLogger(__name__)

#: the cap when none is configured (a quarter of the open-files limit if lower)
DEFAULT_MAX_PENDING = 1024
#: at most one warning per this many seconds about connections closed by the cap
_WARN_EVERY_S = 60.0


def pending_cap_for(open_files: int) -> int:
    """The default cap for a process allowed ``open_files`` descriptors (-1: no limit):
    the half-open connections never take more than a quarter of them."""
    if open_files < 0:
        return DEFAULT_MAX_PENDING
    return max(16, min(DEFAULT_MAX_PENDING, open_files // 4))


def unparsed(request: Request) -> bool:
    """True for Sanic's stand-in request, made to answer an error raised before
    the request head was read (it has no route, no headers and no user to check)."""
    return request.route is None and request.method == "NONE"


class _Pending:
    __slots__ = ("deadline", "saw_bytes")

    def __init__(self, deadline: asyncio.TimerHandle, saw_bytes: bool) -> None:
        self.deadline = deadline
        self.saw_bytes = saw_bytes


class _Watch:
    """This process's connections still sending a request head, oldest first."""

    def __init__(self) -> None:
        self.timeout_s = 10.0
        self.max_pending = DEFAULT_MAX_PENDING
        self.pending: dict[Any, _Pending] = {}
        self.evicted = 0
        self.warned_at = 0.0

    def arm(self, protocol: Any, *, saw_bytes: bool) -> None:
        old = self.pending.pop(protocol, None)
        if old is not None:
            old.deadline.cancel()
        deadline = protocol.loop.call_later(self.timeout_s, self.expire, protocol)
        self.pending[protocol] = _Pending(deadline, saw_bytes)  # newest last
        while len(self.pending) > self.max_pending:
            oldest = next(iter(self.pending))
            record = self.pending.pop(oldest)
            record.deadline.cancel()
            if head_unfinished(oldest, saw_bytes=record.saw_bytes):
                self.evicted += 1
                time_out_request(oldest, "too many connections are sending a request head: retry")
        if self.evicted:
            self._warn()

    def expire(self, protocol: Any) -> None:
        record = self.pending.pop(protocol, None)
        if record is not None and head_unfinished(protocol, saw_bytes=record.saw_bytes):
            time_out_request(protocol, "the request head did not arrive in time")

    def forget(self, protocol: Any) -> None:
        record = self.pending.pop(protocol, None)
        if record is not None:
            record.deadline.cancel()

    def _warn(self) -> None:
        now = time.monotonic()
        if now - self.warned_at < _WARN_EVERY_S:
            return
        log.warning(
            "%d connection(s) closed: more than %d were sending a request head at once "
            "(SANIC_CHAT_MAX_PENDING_HANDSHAKES)",
            self.evicted,
            self.max_pending,
        )
        self.evicted = 0
        self.warned_at = now


_WATCH = _Watch()


def _received(protocol: Any) -> None:
    record = _WATCH.pending.get(protocol)
    if record is not None and not record.saw_bytes:
        record.saw_bytes = True  # the first bytes of the first request
    elif between_requests(protocol):
        _WATCH.arm(protocol, saw_bytes=True)  # the next request on a kept-alive connection


def install(app: Sanic[Any, Any], *, timeout_s: float, max_pending: int | None) -> None:
    """Enforce the deadline and the cap in every process serving ``app``; at start
    the soft open-files limit is raised to the hard one (runtime.py)."""
    watch_request_heads(
        opened=lambda protocol: _WATCH.arm(protocol, saw_bytes=False),
        received=_received,
        lost=_WATCH.forget,
    )

    @app.before_server_start
    async def start_handshake_limits(app: Sanic[Any, Any]) -> None:
        open_files = raise_open_files_limit()
        _WATCH.timeout_s = timeout_s
        _WATCH.max_pending = max_pending or pending_cap_for(open_files)
        log.debug(
            "request heads: %.1f s deadline, at most %d pending (open files: %d)",
            timeout_s,
            _WATCH.max_pending,
            open_files,
        )
