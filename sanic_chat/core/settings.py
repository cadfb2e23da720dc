"""The core's tunables, with the defaults a laptop and a server both want."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CoreSettings"]


@dataclass(frozen=True, slots=True)
class CoreSettings:
    #: the partial reply is written to the database at least this often, so a
    #: killed process loses at most this much of a reply
    checkpoint_interval_s: float = 1.0
    #: history sent to the provider: the newest messages within this many chars
    history_max_chars: int = 24_000
    #: an optional system prompt sent first to every provider
    system_prompt: str | None = None
    #: a running reply's lease; a node renews it every lease_s / 3, and rows
    #: whose lease lapsed are marked interrupted by any node
    lease_s: float = 15.0
    #: longest user message accepted (code points)
    max_content_chars: int = 32_000
    #: per-connection outbound bounds (see Outbox)
    outbox_max_chars: int = 2_000_000
    outbox_max_frames: int = 10_000
    #: how long a finished reply waits for a database that is down before giving up
    finish_retry_s: float = 300.0
    #: writers let flowing text gather this long once ``coalesce_above``
    #: replies run in this process, longer the more run (see core.load)
    coalesce_s: float = 0.04
    coalesce_above: int = 32
