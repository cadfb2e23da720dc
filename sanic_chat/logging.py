"""Logs: plain text for people (the default), or ``SANIC_CHAT_LOG_FORMAT=json`` for
machines -- one JSON object per line, from our loggers and Sanic's alike, tagged with
the node, the request and the client connection being served.

Secrets stay out of both: records pass the security layer's redaction filter
(tickets, tokens, bearer credentials in URLs and messages), and a JSON line holds a
fixed set of fields -- never a request's headers or body, nor a message's content.

Request and connection ids travel in context variables: the request middleware
binds them (:func:`bind_request`), and every task started while serving that
request (a WebSocket's frames, the replies it starts) inherits them.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = [
    "JsonFormatter",
    "bind_request",
    "configure_logging",
    "connection_id",
    "request_id",
]

#: the HTTP request (or WebSocket upgrade) being served
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "sanic_chat_request_id", default=None
)
#: the client's TCP connection (several keep-alive requests share one)
connection_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "sanic_chat_connection_id", default=None
)

#: Sanic's loggers (``sanic.access`` included), formatted like ours
_SANIC_LOGGERS = ("sanic.root", "sanic.error", "sanic.access", "sanic.server", "sanic.websockets")
#: record attributes copied into a JSON line when present: ours (passed as ``extra``) and
#: those of Sanic's access log. Anything else a record carries is left out.
_FIELDS = (
    "generation_id",
    "conversation_id",
    "node_id",
    "code",
    "status",
    "host",
    "request",
    "byte",
    "duration",
)
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_OURS = "sanic_chat"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts``, ``level``, ``logger``, ``message``, the
    request/connection ids of the context it was logged in, ``node_id``, a few known
    fields (:data:`_FIELDS`) and, for an exception, ``exc`` (already redacted when the
    redaction filter saw it)."""

    def __init__(self, node_id: str | None = None) -> None:
        super().__init__()
        self.node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")[
                :-6
            ]
            + "Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        req = getattr(record, "request_id", None) or request_id.get()
        if req is not None:
            entry["request_id"] = req
        conn = getattr(record, "connection_id", None) or connection_id.get()
        if conn is not None:
            entry["connection_id"] = conn
        if self.node_id is not None:
            entry["node_id"] = self.node_id
        for name in _FIELDS:
            value = getattr(record, name, None)
            if isinstance(value, str):
                value = value.strip()
            if value is not None and value != "":
                entry[name] = value if isinstance(value, str | int | float | bool) else str(value)
        if record.exc_info:
            entry["exc"] = record.exc_text or self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(
    log_format: str = "text", *, level: str = "INFO", node_id: str | None = None
) -> None:
    """Set up the ``sanic_chat`` logger (one handler, to stderr, not propagated: Sanic
    configures its own loggers, and a root handler would print their lines twice) and,
    for ``json``, give Sanic's handlers the JSON formatter too. Idempotent: call it again
    once Sanic has configured its loggers (every worker process does, in the app factory).
    ``level`` is the caller's: the CLI's from ``SANIC_CHAT_LOG_LEVEL`` (the settings).
    """
    formatter: logging.Formatter = (
        JsonFormatter(node_id) if log_format == "json" else logging.Formatter(_TEXT_FORMAT)
    )
    ours = logging.getLogger(_OURS)
    _handler_of(ours).setFormatter(formatter)
    ours.setLevel(level)
    ours.propagate = False
    if log_format != "json":
        return
    for name in _SANIC_LOGGERS:
        for sanic_handler in logging.getLogger(name).handlers:
            sanic_handler.setFormatter(formatter)
    # everyone else's records (asyncio, libraries, warnings) would reach stderr as bare
    # text through logging's last resort: they get a JSON handler on the root logger,
    # which skips the records that Sanic's handlers and ours have written already
    _handler_of(logging.getLogger(), _foreign_only).setFormatter(formatter)
    logging.captureWarnings(True)


def _handler_of(
    logger: logging.Logger, *filters: Callable[[logging.LogRecord], bool]
) -> logging.Handler:
    """The stderr handler this module gave ``logger`` (added, with ``filters``, on
    the first call): marked, so that configuring again replaces no one else's."""
    handler = next((h for h in logger.handlers if getattr(h, "_sanic_chat", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler._sanic_chat = True  # type: ignore[attr-defined]
        for keep in filters:
            handler.addFilter(keep)
        logger.addHandler(handler)
    return handler


def _foreign_only(record: logging.LogRecord) -> bool:
    return not record.name.startswith(("sanic.", _OURS))


def bind_request(request: Any) -> None:
    """Tag what is logged while serving ``request`` (and in the tasks it starts) with its
    id (Sanic's ``request.id``: the client's ``X-Request-ID`` if it sent a valid one) and
    its connection's id (made once per TCP connection)."""
    request_id.set(str(request.id))
    conn_info = getattr(request, "conn_info", None)
    if conn_info is None:
        return
    conn = getattr(conn_info.ctx, "sanic_chat_connection_id", None)
    if conn is None:
        conn = conn_info.ctx.sanic_chat_connection_id = uuid.uuid4().hex[:12]
    connection_id.set(conn)
