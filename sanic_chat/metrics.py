"""Prometheus metrics (``sanic_chat_*``), one registry per app so that several
apps in one process (tests) never collide.

With several workers behind one port a scrape reaches one worker at random, so
``sanic-chat serve --workers N`` runs prometheus-client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``, set by the CLI when absent): every worker writes its
values to files there, and whichever worker answers ``/metrics`` reports the sum
over all of them (gauges: the live workers' sum).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import values as _values

__all__ = ["LOOP_LAG_INTERVAL_S", "Metrics", "multiprocess_dir", "watch_event_loop_lag"]


def multiprocess_dir(environ: Mapping[str, str]) -> str | None:
    """The multiprocess directory named in ``environ`` (the process's environment, read
    by the composition root), if prometheus-client runs in multiprocess mode (decided
    when it is first imported, from that environment)."""
    if _values.ValueClass is _values.MutexValue:
        return None
    return environ.get("PROMETHEUS_MULTIPROC_DIR") or environ.get("prometheus_multiproc_dir")


_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """``multiprocess_dir``: see :func:`multiprocess_dir`; None: this process's values."""

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess_dir = multiprocess_dir
        r = self.registry
        self.connections = Gauge(
            "sanic_chat_connections",
            "Open client connections",
            ["transport"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.running_replies = Gauge(
            "sanic_chat_running_replies",
            "Replies streaming in this process (all live workers in multiprocess mode)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.first_chunk_seconds = Histogram(
            "sanic_chat_first_chunk_seconds",
            "Time from the start of a reply to its first chunk",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.reply_seconds = Histogram(
            "sanic_chat_reply_seconds",
            "Time from the start of a reply to its end",
            ["status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.persist_seconds = Histogram(
            "sanic_chat_persist_seconds",
            "Time to commit a user message (and its reply row)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )
        self.event_loop_lag_seconds = Histogram(
            "sanic_chat_event_loop_lag_seconds",
            "How late a timer set on the event loop fires: the wait every ready task "
            "has before it runs (sampled twice a second)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.provider_errors = Counter(
            "sanic_chat_provider_errors", "Replies that failed, by error code", ["code"], registry=r
        )
        self.slow_consumers_dropped = Counter(
            "sanic_chat_slow_consumers_dropped",
            "Connections closed because they fell too far behind",
            ["transport"],
            registry=r,
        )
        self.frames_refused = Counter(
            "sanic_chat_frames_refused",
            "Client frames answered with an error",
            ["code"],
            registry=r,
        )

    def render(self) -> bytes:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.multiprocess_dir)
        return generate_latest(registry)

    def process_exited(self) -> None:
        """Forget this process's live gauges (multiprocess mode): a stopped worker's
        connections and replies must not count any more."""
        if self.multiprocess_dir is not None:
            from prometheus_client.multiprocess import mark_process_dead

            mark_process_dead(os.getpid(), self.multiprocess_dir)


#: how often the event loop's lag is sampled
LOOP_LAG_INTERVAL_S = 0.5


async def watch_event_loop_lag(metrics: Metrics, interval_s: float = LOOP_LAG_INTERVAL_S) -> None:
    """Observe, forever, how much later than asked a sleep ends: on a saturated
    loop, every await waits about that long for its turn."""
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time() + interval_s
        await asyncio.sleep(interval_s)
        metrics.event_loop_lag_seconds.observe(max(0.0, loop.time() - asked))
