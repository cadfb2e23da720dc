"""Load policy: how long a connection's writer lets flowing text gather.

A frame costs a write system call (on loopback, the receiver's TCP work too)
and a trip through the transport's stack: once the event loop is the
bottleneck, fewer frames is what keeps first chunks fast. So text is held
back only while this process is busy with many replies, and longer the
busier it is. Transports just ask for the number
(:meth:`~sanic_chat.core.service.ChatService.linger_s`).
"""

from __future__ import annotations

__all__ = ["MAX_LINGER_FACTOR", "linger_s"]

#: the most the coalescing window grows to, in multiples of ``coalesce_s``
#: (40 ms by default: at most 100 ms, still ten updates a second)
MAX_LINGER_FACTOR = 2.5


def linger_s(running: int, *, coalesce_s: float, coalesce_above: int) -> float:
    """The window for ``running`` replies: none below ``coalesce_above``, then
    ``coalesce_s`` growing in proportion (twice as long at twice as many), up
    to :data:`MAX_LINGER_FACTOR` times ``coalesce_s``. ``coalesce_s <= 0``
    turns it off."""
    if coalesce_s <= 0 or running < coalesce_above:
        return 0.0
    factor = running / coalesce_above if coalesce_above > 0 else 1.0
    return coalesce_s * min(MAX_LINGER_FACTOR, max(1.0, factor))
