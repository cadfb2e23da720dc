"""Models list, liveness, readiness and metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json, raw
from sanic_ext import openapi

from ..transports.base import TransportContext

__all__ = ["operations_blueprint"]


def operations_blueprint(
    context: TransportContext, describe_models: Callable[[], list[dict[str, Any]]]
) -> Blueprint:
    bp = Blueprint("operations")
    metrics = context.metrics

    @bp.get("/api/v1/models")
    @openapi.summary("The configured models (never their keys)")
    async def models(request: Request) -> HTTPResponse:
        return json({"default": context.service.models.default, "items": describe_models()})

    @bp.get("/healthz")
    @openapi.summary("Liveness: the process answers")
    async def healthz(request: Request) -> HTTPResponse:
        return json({"status": "ok"})

    @bp.get("/readyz")
    @openapi.summary("Readiness: the database and the bus are reachable")
    async def readyz(request: Request) -> HTTPResponse:
        service = context.service
        checks: dict[str, str] = {}
        for name, ping in (("database", service.store.ping), ("bus", service.bus.ping)):
            try:
                await asyncio.wait_for(ping(), 2.0)
                checks[name] = "ok"
            except Exception as exc:
                checks[name] = f"unreachable: {type(exc).__name__}"
        ready = all(v == "ok" for v in checks.values()) and service.accepting
        if not service.accepting:
            checks["server"] = "draining"
        return json(
            {"status": "ok" if ready else "unavailable", "checks": checks},
            status=200 if ready else 503,
        )

    @bp.get("/metrics")
    @openapi.exclude()
    async def metrics_(request: Request) -> HTTPResponse:
        metrics.running_replies.set(len(context.service.running))
        return raw(metrics.render(), content_type="text/plain; version=0.0.4; charset=utf-8")

    return bp
