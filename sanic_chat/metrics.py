"""Prometheus metrics (``sanic_chat_*``), one registry per app so that several
apps in one process (tests) never collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Gauge(
            "sanic_chat_connections", "Open client connections", ["transport"], registry=r
        )
        self.running_replies = Gauge(
            "sanic_chat_running_replies", "Replies streaming in this process", registry=r
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
        return generate_latest(self.registry)
