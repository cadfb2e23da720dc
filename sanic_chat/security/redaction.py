"""Keep credentials out of logs.

Tickets travel in query strings (``/ws?ticket=...``), which Sanic's access log
and its error log print with the URL. This filter rewrites every record that
reaches our loggers and Sanic's: ``ticket=``, ``token=``, ``access_token=``,
``api_key=`` and ``key=`` values, ``Bearer`` credentials and anything shaped
like a JWT become ``[redacted]``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

__all__ = ["RedactSecrets", "install_log_redaction", "redact"]

_PATTERNS = (
    (
        re.compile(r"(?i)\b((?:ticket|token|access_token|api_key|apikey|key|secret)=)[^&\s'\"]+"),
        r"\1[redacted]",
    ),
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1[redacted]"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*"), "[redacted]"),
)

#: Sanic's loggers, and ours
LOGGERS = (
    "sanic.access",
    "sanic.error",
    "sanic.root",
    "sanic.server",
    "sanic.websockets",
    "sanic_chat",
    "",
)


def redact(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        request = getattr(record, "request", None)
        if isinstance(request, str):  # Sanic's access log: "GET /ws?ticket=..."
            record.request = redact(request)
        try:
            message = record.getMessage()
        except Exception:
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            formatter = logging.Formatter()
            record.exc_text = redact(formatter.formatException(record.exc_info))
        return True


_FILTER = RedactSecrets()


def install_log_redaction() -> None:
    """Attach the filter to our loggers, Sanic's, and every handler they have
    (a logger's filter does not see records its children propagate; its
    handlers' filters do). Safe to call again after logging is reconfigured."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        _add(logger)
        for handler in logger.handlers:
            _add(handler)


def _add(target: Any) -> None:
    if _FILTER not in target.filters:
        target.addFilter(_FILTER)
