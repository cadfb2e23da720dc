"""Models list, liveness, readiness and metrics."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json, raw
from sanic_ext import openapi

from ..core.errors import failure_cause
from ..transports.base import TransportContext
from .schemas import Health, ModelList, Readiness, json_response

__all__ = ["operations_blueprint"]

#: a readiness probe answers within this long, reachable or not
_PROBE_TIMEOUT_S = 2.0


def operations_blueprint(
    context: TransportContext, describe_models: Callable[[], list[dict[str, Any]]]
) -> Blueprint:
    bp = Blueprint("operations")
    metrics = context.metrics

    @bp.get("/api/v1/models")
    @openapi.summary("The configured models (never their keys)")
    @json_response(200, ModelList, "the models, the default one, and the size limits")
    async def models(request: Request) -> HTTPResponse:
        # the limits let a client refuse a message before sending it, rather
        # than learn them from a refusal (a 1009 close ends the connection)
        limits = {
            "max_content_chars": context.service.settings.max_content_chars,
            "max_frame_bytes": context.max_frame_bytes,
            "max_body_bytes": request.app.config.REQUEST_MAX_SIZE,
        }
        return json(
            {
                "default": context.service.models.default,
                "items": describe_models(),
                "limits": limits,
            }
        )

    @bp.get("/healthz")
    @openapi.summary("Liveness: the process answers")
    @json_response(200, Health, "alive")
    async def healthz(request: Request) -> HTTPResponse:
        return json({"status": "ok"})

    @bp.get("/readyz")
    @openapi.summary("Readiness: the database and the bus are reachable, and not draining")
    @json_response(200, Readiness, "ready")
    @json_response(503, Readiness, "not ready: the checks say why")
    async def readyz(request: Request) -> HTTPResponse:
        service = context.service
        names = ("database", "bus")
        results = await asyncio.gather(
            *(_probe(ping) for ping in (service.store.ping, service.bus.ping))
        )
        checks = dict(zip(names, results, strict=True))
        # draining: a load balancer stops sending new clients here, while the
        # replies still running finish on the connections they have
        checks["server"] = "ok" if service.accepting else "draining"
        ready = all(v == "ok" for v in checks.values())
        return json(
            {"status": "ok" if ready else "unavailable", "checks": checks},
            status=200 if ready else 503,
            headers={"Cache-Control": "no-store"},
        )

    @bp.get("/metrics")
    @openapi.exclude()
    async def metrics_(request: Request) -> HTTPResponse:
        metrics.running_replies.set(len(context.service.running))
        return raw(metrics.render(), content_type="text/plain; version=0.0.4; charset=utf-8")

    refresher: list[asyncio.Task[None]] = []

    @bp.after_server_start
    async def start_gauges(app: Any) -> None:
        if metrics.multiprocess_dir is not None:
            # a scrape reaches one worker; the others keep their gauge current
            refresher.append(asyncio.create_task(_refresh_running(context)))

    @bp.after_server_stop
    async def stop_gauges(app: Any) -> None:
        for task in refresher:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        refresher.clear()
        metrics.process_exited()

    return bp


async def _probe(ping: Callable[[], Awaitable[None]]) -> str:
    try:
        await asyncio.wait_for(ping(), _PROBE_TIMEOUT_S)
    except Exception as exc:
        # the cause an operator can act on ("connection refused (10.0.0.5:5432)"), never
        # a password; TimeoutError: no answer within the probe's time
        return f"unreachable: {failure_cause(exc)}"
    return "ok"


async def _refresh_running(context: TransportContext) -> None:
    while True:
        context.metrics.running_replies.set(len(context.service.running))
        await asyncio.sleep(1.0)
