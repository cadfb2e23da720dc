"""Models list, liveness, readiness and metrics."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json, raw
from sanic_ext import openapi

from ..core.doors import Readiness as CoreReadiness
from ..transports.base import TransportContext
from .schemas import Health, ModelList, Readiness, json_response

__all__ = ["operations_blueprint"]


def operations_blueprint(
    context: TransportContext,
    describe_models: Callable[[], list[dict[str, Any]]],
    core: Callable[[], CoreReadiness],
) -> Blueprint:
    """``core`` gives the core's door for operations (there once the server started)."""
    bp = Blueprint("operations")
    metrics = context.metrics

    @bp.get("/api/v1/models")
    @openapi.summary("The configured models (never their keys)")
    @json_response(200, ModelList, "the models, the default one, and the size limits")
    async def models(request: Request) -> HTTPResponse:
        # the limits let a client refuse a message before sending it, rather
        # than learn them from a refusal (a 1009 close ends the connection)
        limits = {
            "max_content_chars": core().max_content_chars,
            "max_frame_bytes": context.max_frame_bytes,
            "max_body_bytes": request.app.config.REQUEST_MAX_SIZE,
        }
        return json(
            {
                "default": core().default_model,
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
        # database, bus and server (draining: a load balancer stops sending new
        # clients here, while the replies still running finish where they are)
        checks = await core().probe()
        ready = all(v == "ok" for v in checks.values())
        return json(
            {"status": "ok" if ready else "unavailable", "checks": checks},
            status=200 if ready else 503,
            headers={"Cache-Control": "no-store"},
        )

    @bp.get("/metrics")
    @openapi.exclude()
    async def metrics_(request: Request) -> HTTPResponse:
        metrics.running_replies.set(core().running_count)
        return raw(metrics.render(), content_type="text/plain; version=0.0.4; charset=utf-8")

    refresher: list[asyncio.Task[None]] = []

    @bp.after_server_start
    async def start_gauges(app: Any) -> None:
        if metrics.multiprocess_dir is not None:
            # a scrape reaches one worker; the others keep their gauge current
            refresher.append(asyncio.create_task(_refresh_running(context, core)))

    @bp.after_server_stop
    async def stop_gauges(app: Any) -> None:
        for task in refresher:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        refresher.clear()
        metrics.process_exited()

    return bp


async def _refresh_running(context: TransportContext, core: Callable[[], CoreReadiness]) -> None:
    while True:
        context.metrics.running_replies.set(core().running_count)
        await asyncio.sleep(1.0)
