"""What every HTTP provider shares: the one map from upstream failures to
:class:`ProviderError`, retries before the first token, and the request loop.

Invariants:

* ``stream`` raises only :class:`ProviderError` subclasses.
* A retry happens only before the first chunk was yielded; after that, any
  failure ends the stream (a retry would repeat text the user already has).
* The upstream response lives inside ``async with client.stream(...)`` in the
  generator, so ``aclose()`` or cancelling the consuming task closes it at once.
* A message shown to users names the model as the models file does ("the
  model 'local-llama'"), never a vendor the operator did not pick (an
  OpenAI-compatible local server is not "OpenAI"), and carries the status and
  the vendor's error type and a trimmed, redacted vendor message: never
  headers, keys or raw bodies.
* Every error leaving ``stream`` carries where it failed for the operator's
  log (``upstream_host``, ``upstream_status``, ``upstream_model``): the host
  and port of the base URL only, never its credentials, path or query.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import errno
import random
import re
import socket
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol, TypeVar

import httpx
import orjson

from ..core.errors import (
    ProviderError,
    ProviderFailure,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnauthorized,
)
from ..core.ports import Chunk, CompletionRequest
from ..redaction import redact_url
from .event_stream import NotAnEventStream, ServerSentEvent, server_sent_events
from .spec import ModelSpec

__all__ = [
    "HttpProvider",
    "RetryPolicy",
    "VendorDecoder",
    "connect_failure",
    "decode_stream",
    "error_from_response",
    "error_from_transport",
    "loads_json",
    "parse_retry_after",
    "redact",
    "sse_events",
    "stream_with_retries",
    "unbind_stream",
]

_ERROR_BODY_LIMIT = 16 * 1024
_MESSAGE_LIMIT = 200
# things that look like credentials, in case a vendor echoes one back
_KEYLIKE = re.compile(r"(sk-[A-Za-z0-9_\-*.]{6,}|(?i:bearer)\s+\S+|[A-Za-z0-9_\-]{32,})")


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` trimmed to one short line, with secrets and key-like words removed."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = _KEYLIKE.sub("***", " ".join(text.split()))
    if len(text) > _MESSAGE_LIMIT:
        text = text[: _MESSAGE_LIMIT - 1] + "…"
    return text


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms``, or ``Retry-After`` (seconds or an
    HTTP date); None when absent or unreadable."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = datetime.now(UTC).timestamp() if now is None else now
    return max(0.0, when.timestamp() - current)


def _vendor_error(body: bytes) -> tuple[str | None, str | None]:
    """(type, message) out of the common vendor error bodies:
    OpenAI ``{"error": {"type", "message"}}``, Anthropic ``{"type": "error",
    "error": {...}}``, Ollama ``{"error": "text"}``."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    error = data.get("error")
    if isinstance(error, dict):
        kind = error.get("type") or error.get("code")
        message = error.get("message")
        return (str(kind) if kind else None, str(message) if message else None)
    if isinstance(error, str):
        return None, error
    return None, None


def error_from_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    vendor: str,
    secrets: tuple[str, ...] = (),
) -> ProviderError:
    """The one status -> error map. ``vendor`` is how the message names the
    upstream (a provider passes "the model 'NAME'")."""
    kind, message = _vendor_error(body)
    detail = ": ".join(redact(part, secrets) for part in (kind, message) if part)
    summary = f"{vendor} answered {status}" + (f" ({detail})" if detail else "")
    error: ProviderError
    if status in (401, 403):
        # the vendor's words about a rejected key may quote it: keep only the type
        error = ProviderUnauthorized(
            f"{vendor} rejected the API key ({status}"
            + (f" {redact(kind, secrets)}" if kind else "")
            + ")"
        )
    elif status == 429:
        error = ProviderRateLimited(summary, retry_after=parse_retry_after(headers))
    elif status >= 500:
        # 529 is Anthropic's "overloaded"
        error = ProviderFailure(summary, retryable=True)
    else:
        error = ProviderFailure(summary)
    error.upstream_status = status
    return error


def error_from_transport(
    exc: httpx.TransportError,
    *,
    vendor: str,
    responded: bool,
    read_timeout_s: float | None = None,
    connect_timeout_s: float | None = None,
) -> ProviderError:
    """Translate an httpx transport error. ``responded``: the status line arrived
    (after that, a broken connection is a cut stream, never retried)."""
    if isinstance(exc, httpx.ReadTimeout):
        waited = f"{read_timeout_s:g} s" if read_timeout_s is not None else "too long"
        return ProviderTimeout(f"{vendor} sent nothing for {waited}")
    if isinstance(exc, httpx.ConnectTimeout):
        waited = f"within {connect_timeout_s:g} s" if connect_timeout_s is not None else "in time"
        return ProviderFailure(
            f"could not connect to {vendor} (no connection {waited})", retryable=True
        )
    if isinstance(exc, httpx.ConnectError):
        return ProviderFailure(
            f"could not connect to {vendor} ({connect_failure(exc)})", retryable=True
        )
    if isinstance(exc, httpx.PoolTimeout):
        return ProviderTimeout(f"no free connection to {vendor}")
    if isinstance(exc, httpx.TimeoutException):
        return ProviderTimeout(f"{vendor} timed out")
    if not responded:
        # the request was not answered at all (e.g. a stale keep-alive connection)
        return ProviderFailure(f"{vendor} closed the connection before answering", retryable=True)
    return ProviderFailure(f"{vendor} closed the stream before it finished")


def connect_failure(exc: BaseException) -> str:
    """Why a connection could not be made, in a few words, from the OS error
    behind ``exc`` (httpx's and our pool's ConnectError keep it as their
    context): refused, no such host, TLS, or the OS's own words."""
    seen: BaseException | None = exc
    causes: list[BaseException] = []
    while seen is not None and len(causes) < 8:
        causes.append(seen)
        seen = seen.__cause__ or seen.__context__
    for cause in causes:
        if isinstance(cause, ConnectionRefusedError) or (
            isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED
        ):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return "host name not found"
        if isinstance(cause, ssl.SSLError):
            return f"TLS handshake failed: {redact(cause.reason or str(cause))}"
    for cause in causes:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror.lower()
    text = " ".join(str(c) for c in causes)
    # asyncio's "Multiple exceptions: ..." when every address of a name refused
    if "refused" in text.lower() or "Connect call failed" in text:
        return "connection refused"
    return "unreachable"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 3
    deadline_s: float = 10.0
    base_delay_s: float = 0.5
    max_delay_s: float = 4.0

    @classmethod
    def of(cls, spec: ModelSpec) -> RetryPolicy:
        return cls(
            max_attempts=spec.max_attempts,
            deadline_s=spec.retry_deadline_s,
            base_delay_s=spec.retry_base_delay_s,
            max_delay_s=spec.retry_max_delay_s,
        )

    def backoff(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """Full jitter: uniform in [0, min(max, base * 2**(attempt-1)))."""
        return rng() * min(self.max_delay_s, self.base_delay_s * (2 ** (attempt - 1)))


async def stream_with_retries(
    attempt: Callable[[], AsyncGenerator[Chunk, None]],
    policy: RetryPolicy,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Any] = asyncio.sleep,
    rng: Callable[[], float] = random.random,
) -> AsyncGenerator[Chunk, None]:
    """Run ``attempt()`` and pass its chunks on; retry a retryable failure only
    while no chunk was yielded, up to ``max_attempts`` and within the deadline
    (a ``Retry-After`` is honoured when it fits, else the failure is final)."""
    deadline = clock() + policy.deadline_s
    number = 0
    while True:
        number += 1
        yielded = False
        try:
            async with aclosing(attempt()) as chunks:
                async for chunk in chunks:
                    yielded = True
                    yield chunk
            return
        except ProviderError as exc:
            if yielded or not exc.retryable or number >= policy.max_attempts:
                raise
            delay = policy.backoff(number, rng)
            retry_after = getattr(exc, "retry_after", None)
            if retry_after is not None:
                delay = float(retry_after)
            if clock() + delay > deadline:
                raise
            await sleep(delay)


class HttpProvider:
    """A model behind an HTTP streaming API. Subclasses give the path, the
    request body and headers, and decode the response body into chunks."""

    provider: str = ""
    vendor: ClassVar[str] = ""
    path: ClassVar[str] = ""

    def __init__(self, spec: ModelSpec, client: httpx.AsyncClient) -> None:
        if spec.base_url is None:
            raise ValueError(f"model {spec.name!r} has no base_url")
        self.name = spec.name
        self.spec = spec
        self.client = client
        self.url = spec.base_url.rstrip("/") + self.path
        #: how messages shown to users name the upstream: the model they picked
        self.label = f"the model {spec.name!r}"
        #: what the operator's log says it is: host[:port] and nothing else
        self.host = redact_url(spec.base_url, host_only=True)
        self.retry = RetryPolicy.of(spec)
        # no overall deadline for a stream: only the gap between bytes is bounded
        self.timeout = httpx.Timeout(
            connect=spec.connect_timeout_s,
            read=spec.stream_timeout_s,
            write=spec.stream_timeout_s,
            pool=spec.connect_timeout_s,
        )
        self._secrets = tuple(s for s in (spec.api_key, *(v for _, v in spec.headers)) if s)

    # -- what the vendors' request bodies share

    def plain_messages(self, request: CompletionRequest) -> list[dict[str, str]]:
        """The turns as ``{"role", "content"}`` objects (OpenAI's and Ollama's form)."""
        return [{"role": turn.role, "content": turn.content} for turn in request.messages]

    def max_tokens(self, request: CompletionRequest) -> int | None:
        """The request's, else the model's (None: the vendor's default)."""
        return request.max_tokens if request.max_tokens is not None else self.spec.max_tokens

    def temperature(self, request: CompletionRequest) -> float | None:
        """The request's, else the model's (None: the vendor's default)."""
        return request.temperature if request.temperature is not None else self.spec.temperature

    def sampling(self, request: CompletionRequest, max_tokens_key: str) -> dict[str, Any]:
        """The token limit (under the vendor's ``max_tokens_key``) and temperature
        of :meth:`max_tokens` and :meth:`temperature`, each only when set."""
        options: dict[str, Any] = {}
        max_tokens = self.max_tokens(request)
        if max_tokens is not None:
            options[max_tokens_key] = max_tokens
        temperature = self.temperature(request)
        if temperature is not None:
            options["temperature"] = temperature
        return options

    def bearer(self, headers: dict[str, str]) -> dict[str, str]:
        """``headers`` with the API key as a Bearer token, if the model has one."""
        if self.spec.api_key:
            headers["authorization"] = f"Bearer {self.spec.api_key}"
        return headers

    # -- what a vendor module provides

    def build_body(self, request: CompletionRequest) -> dict[str, Any]:
        raise NotImplementedError

    def build_headers(self) -> dict[str, str]:
        raise NotImplementedError

    def decode(self, response: httpx.Response) -> AsyncGenerator[Chunk, None]:
        raise NotImplementedError

    # -- the loop

    def stream(self, request: CompletionRequest) -> AsyncGenerator[Chunk, None]:
        return stream_with_retries(lambda: self._attempt(request), self.retry)

    async def _attempt(self, request: CompletionRequest) -> AsyncGenerator[Chunk, None]:
        responded = False
        response: httpx.Response | None = None
        try:
            try:
                # built inside the generator so that even a refused request fails
                # on iteration, like every other provider error
                content = orjson.dumps(self.build_body(request))
                headers = {"content-type": "application/json", **dict(self.spec.headers)}
                headers.update(self.build_headers())
                async with self.client.stream(
                    "POST", self.url, content=content, headers=headers, timeout=self.timeout
                ) as response:
                    responded = True
                    if response.status_code >= 400:
                        raise error_from_response(
                            response.status_code,
                            response.headers,
                            await _read_limited(response),
                            vendor=self.label,
                            secrets=self._secrets,
                        )
                    async with aclosing(self.decode(response)) as chunks:
                        async for chunk in chunks:
                            yield chunk
            except NotAnEventStream:
                raise ProviderFailure(f"{self.label} did not answer with an event stream") from None
            except httpx.TransportError as exc:
                raise error_from_transport(
                    exc,
                    vendor=self.label,
                    responded=responded,
                    read_timeout_s=self.spec.stream_timeout_s,
                    connect_timeout_s=self.spec.connect_timeout_s,
                ) from None
            except (httpx.HTTPError, httpx.StreamError) as exc:
                raise ProviderFailure(f"{self.label} stream broke ({type(exc).__name__})") from None
        except ProviderError as exc:
            exc.upstream_host = self.host
            exc.upstream_model = self.spec.model
            if exc.upstream_status is None and response is not None:
                exc.upstream_status = response.status_code
            raise
        finally:
            if response is not None:
                unbind_stream(response)

    async def aclose(self) -> None:
        """The shared client belongs to the catalog, which closes it."""
        return None


#: what a finished response's body is replaced with (see unbind_stream)
_NO_BODY = httpx.ByteStream(b"")


def unbind_stream(response: httpx.Response) -> None:
    """Break the reference cycle httpx leaves on a closed streamed response.

    ``AsyncClient.send`` wraps the body in a ``BoundAsyncStream`` that refers
    back to its response, so each reply left its response, request, URL and
    headers (14 objects) for the cyclic garbage collector. They lived through
    the young collections (a reply streams for seconds) and piled into the
    old generation, whose full collections stop the event loop. Called once
    the response is closed (its body can no longer be read), this frees them
    at once."""
    response.stream = _NO_BODY


async def _read_limited(response: httpx.Response) -> bytes:
    body = bytearray()
    async for part in response.aiter_bytes():
        body += part
        if len(body) >= _ERROR_BODY_LIMIT:
            break
    return bytes(body[:_ERROR_BODY_LIMIT])


#: after a stream's end marker, how long to wait for the body to end so the
#: connection can go back to the pool (vendors end it at once)
_DRAIN_AFTER_END_S = 0.5


async def drain_after_end(rest: AsyncIterator[Any]) -> None:
    """Read what follows a stream's end marker (in practice: nothing but the
    end of the chunked body). A response closed before its body ended cannot
    be pooled, and the next reply would open a new connection (and TLS
    session); one that never ends is given up on after a moment."""
    with contextlib.suppress(TimeoutError, httpx.HTTPError, httpx.StreamError, ProviderError):
        async with asyncio.timeout(_DRAIN_AFTER_END_S):
            async for _ in rest:
                pass


def sse_events(response: httpx.Response) -> AsyncGenerator[ServerSentEvent, None]:
    """The response's server-sent events (:class:`NotAnEventStream` if it is not
    an event stream), decoded a read at a time: see :mod:`.event_stream`."""
    return server_sent_events(response)


Frame = TypeVar("Frame")


class StreamDecoder(Protocol):
    """A vendor's bytes-free state machine: frames in, chunks out."""

    @property
    def done(self) -> bool:
        """The vendor's end marker arrived."""
        ...

    def end(self) -> Chunk | None:
        """The body ended: a last chunk, or a failure if the stream was cut."""
        ...


class VendorDecoder:
    """What the vendors' decoders share: bytes-free, one frame in and at most one
    chunk out (``feed``, the vendor's own), ``done`` once its end marker arrived;
    a body that ends before it was cut. Messages name the upstream by ``label``
    (a provider passes its model's name)."""

    vendor: ClassVar[str] = ""

    __slots__ = ("done", "label")

    def __init__(self, label: str | None = None) -> None:
        self.label = label or self.vendor
        self.done = False

    def frame(self, data: str | bytes) -> dict[str, Any]:
        """One frame's JSON object; anything else is a malformed frame."""
        frame = loads_json(data, self.label)
        if not isinstance(frame, dict):
            raise ProviderFailure(f"{self.label} sent a malformed stream frame")
        return frame

    def stream_error(self, *parts: str, retryable: bool = False) -> ProviderFailure:
        """An error the vendor sent inside the stream (type, message), redacted."""
        detail = ": ".join(redact(part) for part in parts if part)
        return ProviderFailure(f"{self.label} sent a stream error: {detail}", retryable=retryable)

    def end(self) -> Chunk | None:
        """The body ended: nothing more, since the last chunk came with the end marker."""
        if not self.done:
            raise ProviderFailure(f"{self.label} ended the stream before it finished")
        return None


async def decode_stream(
    frames: AsyncGenerator[Frame, None],
    feed: Callable[[Frame], Chunk | None],
    decoder: StreamDecoder,
) -> AsyncGenerator[Chunk, None]:
    """The one decode loop of every vendor: each frame through ``feed`` (the
    decoder's), chunks passed on; at the end marker the rest of the body is
    drained (so the connection can be pooled), else the body's end decides."""
    async with aclosing(frames):
        async for frame in frames:
            chunk = feed(frame)
            if chunk is not None:
                yield chunk
            if decoder.done:
                await drain_after_end(frames)
                return
    last = decoder.end()
    if last is not None:
        yield last


def loads_json(data: str | bytes, vendor: str) -> Any:
    """Parse one frame of a stream; malformed data is a provider failure."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ProviderFailure(f"{vendor} sent a malformed stream frame") from None
