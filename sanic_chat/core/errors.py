"""Every error sanic-chat reports, with a stable wire ``code``.

The tree::

    ChatError                      code           HTTP  meaning
    ├── ClientError                               (the peer sent something we refuse)
    │   ├── BadRequest             bad_request    400   not JSON, not an object
    │   ├── UnknownType            unknown_type   400   a frame type we do not know
    │   ├── ValidationFailed       validation_error 422 missing or wrong fields
    │   ├── Unauthorized           unauthorized   401
    │   ├── NotFound               not_found      404   missing, or another user's
    │   ├── Conflict               conflict       409   a reply already runs there
    │   ├── RateLimited            rate_limited   429
    │   └── TooLarge               too_large      413
    ├── ProviderError                             (the upstream model failed)
    │   ├── ProviderFailure        provider_error 502
    │   ├── ProviderTimeout        provider_timeout 504
    │   ├── ProviderRateLimited    provider_rate_limited 429
    │   └── ProviderUnauthorized   provider_unauthorized 502
    ├── Interrupted                interrupted    500   the process running a reply died
    ├── Unavailable                unavailable    503   database or bus unreachable; retry
    │   └── OutcomeUnknown         unavailable    503   a write got no answer: it may be stored
    └── InternalError              internal       500

Foreign exceptions (httpx, peewee, redis) are translated into this tree at the
boundary of the adapter that meets them; the core only ever sees these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

__all__ = [
    "BadRequest",
    "ChatError",
    "ClientError",
    "Conflict",
    "InternalError",
    "Interrupted",
    "NotFound",
    "OutcomeUnknown",
    "ProviderError",
    "ProviderFailure",
    "ProviderRateLimited",
    "ProviderTimeout",
    "ProviderUnauthorized",
    "RateLimited",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "UnknownType",
    "ValidationFailed",
    "failure_cause",
]


@dataclass(eq=False, repr=False)
class ChatError(Exception):
    """Base of every error with a wire code. ``message`` is safe to show a user.

    A dataclass so that a subclass carrying more than a message declares it as
    a keyword-only field (``RateLimited.retry_after``) instead of an ``__init__``;
    ``eq=False`` keeps exceptions hashable by identity, ``repr=False`` keeps
    Exception's repr."""

    code: ClassVar[str] = "internal"
    http_status: ClassVar[int] = 500

    message: str = ""
    #: the offending frame's client_id / generation_id, echoed in ``error.ref``
    ref: str | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        self.message = self.message or self.default_message()
        super().__init__(self.message)

    @classmethod
    def default_message(cls) -> str:
        return cls.code.replace("_", " ")


class ClientError(ChatError):
    http_status = 400


class BadRequest(ClientError):
    code = "bad_request"


class UnknownType(ClientError):
    code = "unknown_type"


class ValidationFailed(ClientError):
    code = "validation_error"
    http_status = 422


class Unauthorized(ClientError):
    code = "unauthorized"
    http_status = 401


class NotFound(ClientError):
    code = "not_found"
    http_status = 404


class Conflict(ClientError):
    code = "conflict"
    http_status = 409


@dataclass(eq=False, repr=False)
class RateLimited(ClientError):
    code = "rate_limited"
    http_status = 429
    retry_after: float = field(default=1.0, kw_only=True)


class TooLarge(ClientError):
    code = "too_large"
    http_status = 413


class ProviderError(ChatError):
    """The upstream model failed. ``retryable`` is true only for failures that may
    be retried *before the first token* (never after: text would repeat)."""

    code = "provider_error"
    http_status = 502
    retryable: bool = False
    # Where it failed, for the operator's log line (never shown to users; never
    # a secret): the upstream's host[:port] (no scheme, credentials, path or
    # query), its HTTP status when a response arrived, and its own model id.
    # The provider that raised the error fills them in.
    upstream_host: str | None = None
    upstream_status: int | None = None
    upstream_model: str | None = None


@dataclass(eq=False, repr=False)
class ProviderFailure(ProviderError):
    code = "provider_error"
    retryable: bool = field(default=False, kw_only=True)


class ProviderTimeout(ProviderError):
    code = "provider_timeout"
    http_status = 504


@dataclass(eq=False, repr=False)
class ProviderRateLimited(ProviderError):
    code = "provider_rate_limited"
    http_status = 429
    retryable = True
    retry_after: float | None = field(default=None, kw_only=True)


class ProviderUnauthorized(ProviderError):
    code = "provider_unauthorized"
    http_status = 502


class Interrupted(ChatError):
    code = "interrupted"
    http_status = 500

    @classmethod
    def default_message(cls) -> str:
        return "the process running this reply stopped before it finished"


class Unavailable(ChatError):
    code = "unavailable"
    http_status = 503

    @classmethod
    def default_message(cls) -> str:
        return (
            "the database or bus is unreachable; nothing was stored, retry with the same client_id"
        )


@dataclass(eq=False, repr=False)
class OutcomeUnknown(Unavailable):
    """A write was sent to the database and no answer came back (a timeout, the
    connection lost): it may have been committed. Never "nothing was stored": the
    client must send the same ``client_id`` again (not a new one), which returns
    what was stored, or stores it now.

    ``reply_id`` is the reply row the failed post would have created (None when
    it is known not to have created one): if that row was committed, the
    process that posted it holds its lease and has not started it, and starts it
    (``core/posting.py``)."""

    reply_id: str | None = field(default=None, kw_only=True)

    @classmethod
    def default_message(cls) -> str:
        return (
            "the database did not answer in time; the message may have been stored: "
            "send it again with the same client_id (not a new one) to get it and its reply"
        )


class InternalError(ChatError):
    code = "internal"
    http_status = 500


def failure_cause(exc: BaseException) -> str:
    """One line saying why a call failed, for operators (logs, ``/readyz``).

    An :class:`Unavailable`'s message is for clients ("retry with the same
    client_id"); the adapter that raised it chains the real cause -- the store
    a one-line description naming the server, the bus the driver's error --
    and that is what this names. The first line only (drivers add hints)."""
    cause = exc.__cause__ if isinstance(exc, Unavailable) and exc.__cause__ else exc
    text = next((line.strip() for line in str(cause).splitlines() if line.strip()), "")
    if not text:
        return "timed out" if isinstance(cause, TimeoutError) else type(cause).__name__
    if cause is exc and isinstance(exc, Unavailable) and text == exc.default_message():
        return type(exc).__name__  # no cause given: the client's text says nothing more
    return text
