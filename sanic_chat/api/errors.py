"""HTTP errors: every failure answers ``{"error": {"code", "message"}}``."""

from __future__ import annotations

import logging
from typing import Any

from sanic import Request, Sanic
from sanic.exceptions import SanicException
from sanic.response import HTTPResponse, json

from ..core.errors import ChatError, RateLimited

log = logging.getLogger(__name__)

__all__ = ["error_response", "install_error_handlers"]

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "unauthorized",
    404: "not_found",
    405: "bad_request",
    408: "bad_request",
    409: "conflict",
    413: "too_large",
    422: "validation_error",
    429: "rate_limited",
    503: "unavailable",
}


def error_response(code: str, message: str, status: int) -> HTTPResponse:
    return json({"error": {"code": code, "message": message}}, status=status)


def install_error_handlers(app: Sanic[Any, Any]) -> None:
    @app.exception(ChatError)
    async def chat_error(request: Request, exc: ChatError) -> HTTPResponse:
        response = error_response(exc.code, exc.message, exc.http_status)
        if isinstance(exc, RateLimited):
            response.headers["Retry-After"] = str(max(1, round(exc.retry_after)))
        return response

    @app.exception(SanicException)
    async def sanic_error(request: Request, exc: SanicException) -> HTTPResponse:
        status = getattr(exc, "status_code", 500) or 500
        code = _STATUS_CODES.get(status, "internal" if status >= 500 else "bad_request")
        message = str(exc) if status < 500 else "internal server error"
        return error_response(code, message, status)

    @app.exception(Exception)
    async def unexpected(request: Request, exc: Exception) -> HTTPResponse:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response("internal", "internal server error", 500)
