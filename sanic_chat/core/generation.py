"""One assistant reply, from the first token to its stored end.

A Generation belongs to its conversation, not to a connection: nobody's
disconnect stops it, only :meth:`Generation.cancel` does (Stop, or shutdown).

Order of effects, which resume relies on:
1. ``generation.started`` is published (opening the live tail);
2. each chunk is published as a ``generation.delta`` whose ``offset`` is the
   length of the text before it, and the partial text is checkpointed to the
   store at most every ``checkpoint_interval_s`` (never one write per delta);
3. the row is finalized in the store, THEN the terminal event is published,
   so anyone who misses the live tail finds the final row in the database.

Outages: while the database is unreachable the reply streams on (checkpoints
are skipped, the end is stored when it returns). While the bus is unreachable
the reply keeps reading its provider; what could not be published goes out as
ONE delta from the last published offset once the bus answers again, so the
tail never has a gap and followers lose nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from .errors import ChatError, ProviderError, Unavailable, failure_cause
from .events import (
    GenerationCancelled,
    GenerationCompleted,
    GenerationDelta,
    GenerationFailed,
    TerminalEvent,
)
from .offsets import started_event
from .ports import Bus, CompletionRequest, MessageStore, Provider
from .records import ErrorInfo, Message, Status, Usage, utcnow

log = logging.getLogger(__name__)

__all__ = ["Generation"]

#: while the bus is down, publishing is retried after this long, doubling up to the max
_BUS_MIN_BACKOFF_S = 0.05
_BUS_MAX_BACKOFF_S = 2.0
#: the terminal event is retried this many times (about 100 s at the max backoff)
_TERMINAL_PUBLISH_TRIES = 55


class Generation:
    def __init__(
        self,
        *,
        reply: Message,
        provider: Provider,
        request: CompletionRequest,
        store: MessageStore,
        bus: Bus,
        checkpoint_interval_s: float = 1.0,
        finish_retry_s: float = 300.0,
        on_first_chunk: Callable[[float], None] | None = None,
    ) -> None:
        self.reply = reply
        self.id = reply.id
        self.conversation_id = reply.conversation_id
        self._provider = provider
        self._request = request
        self._store = store
        self._bus = bus
        self._checkpoint_interval_s = checkpoint_interval_s
        self._finish_retry_s = finish_retry_s
        self._on_first_chunk = on_first_chunk
        self._parts: list[str] = []
        self.length = 0  # code points streamed so far
        self._usage: Usage | None = None
        self._finish_reason: str | None = None
        self._stream_task: asyncio.Task[None] | None = None
        self._cancel_status: Status | None = None
        self._checkpointed_length = 0
        self._checkpoint_task: asyncio.Task[None] | None = None
        self.started_at = time.monotonic()
        #: what reached the bus: the start, and the text up to this offset
        self._started_published = False
        self._published = 0
        #: while the bus is down: no publish is tried before this (monotonic) time
        self._bus_retry_at = 0.0
        self._bus_backoff_s = _BUS_MIN_BACKOFF_S
        self._publish_lock = asyncio.Lock()
        self.done = asyncio.Event()
        self.terminal: TerminalEvent | None = None

    @property
    def text(self) -> str:
        text = "".join(self._parts)
        if len(self._parts) > 1:
            self._parts = [text]
        return text

    def cancel(self, status: Status = "cancelled") -> None:
        """Stop the reply. ``status`` is ``cancelled`` for Stop; shutdown uses
        ``interrupted`` when a drain timed out."""
        if self._cancel_status is None:
            self._cancel_status = status
        if self._stream_task is not None and not self._stream_task.done():
            self._stream_task.cancel()

    def start(self) -> None:
        """Start reading the provider now, before :meth:`run` has a turn of
        its own. Idempotent; :meth:`run` calls it too.

        Each task hand-off costs a turn of the event loop, tens of milliseconds
        on a busy server: started from the post, the upstream request goes out
        in the turn after the message is stored, while ``generation.started``
        is published by :meth:`run` in that same turn. The order of events
        holds either way: a delta is published only after the start
        (:meth:`_publish_pending` publishes the start first, one caller at a
        time)."""
        if self._stream_task is None:
            self._stream_task = asyncio.create_task(self._consume())
            if self._cancel_status is not None:  # cancelled before it started
                self._stream_task.cancel()

    async def run(self) -> TerminalEvent:
        """Stream the reply to its end and return the terminal event."""
        self.start()
        assert self._stream_task is not None
        await self._publish_pending()
        status: Status = "complete"
        error: ErrorInfo | None = None
        try:
            await asyncio.shield(self._stream_task)
        except asyncio.CancelledError:
            if self._stream_task.cancelled() or self._cancel_status is not None:
                status = self._cancel_status or "cancelled"
            else:  # run() itself was cancelled: stop streaming, still finalize
                self._stream_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._stream_task
                status = "interrupted"
        except ChatError as exc:  # ProviderError among them
            status, error = "failed", ErrorInfo(exc.code, exc.message)
            self._log_failure(error, exc)
        except Exception:
            log.exception("generation %s failed unexpectedly", self.id)
            status, error = "failed", ErrorInfo("internal", "the reply failed unexpectedly")
        if status == "interrupted":
            error = ErrorInfo("interrupted", "the server stopped before the reply finished")
            self._log_failure(error, None)
        if self._checkpoint_task is not None:
            with contextlib.suppress(Exception):
                await self._checkpoint_task
        terminal = await self._finish(status, error)
        self.terminal = terminal
        await self._publish_terminal(terminal)
        self.done.set()
        return terminal

    def _log_failure(self, error: ErrorInfo, exc: ChatError | None) -> None:
        """The operator's one line for a reply that ends in ``generation.failed``:
        the user's words (``error``) and where it failed, after any retries.
        Ids, names and the upstream's host only: never user content, keys or
        headers (a provider's error carries nothing else)."""
        upstream = exc if isinstance(exc, ProviderError) else None
        log.warning(
            "generation.failed reply=%s conversation=%s model=%s upstream_model=%s "
            "provider=%s host=%s status=%s code=%s: %s",
            self.id,
            self.conversation_id,
            getattr(self._provider, "name", None) or self.reply.model or "-",
            (upstream.upstream_model if upstream else None) or "-",
            getattr(self._provider, "provider", None) or "-",
            (upstream.upstream_host if upstream else None) or "-",
            (upstream.upstream_status if upstream else None) or "-",
            error.code,
            error.message,
            extra={
                "generation_id": self.id,
                "conversation_id": self.conversation_id,
                "code": error.code,
            },
        )

    async def _consume(self) -> None:
        interval = self._checkpoint_interval_s
        last_checkpoint = time.monotonic()
        publish = self._bus.publish
        conversation_id = self.conversation_id
        started = self._started_published
        stream = self._provider.stream(self._request)
        try:
            async for chunk in stream:
                if chunk.text:
                    if self.length == 0 and self._on_first_chunk is not None:
                        self._on_first_chunk(time.monotonic() - self.started_at)
                    offset = self.length
                    self._parts.append(chunk.text)
                    self.length += len(chunk.text)
                    if started and self._published == offset:
                        try:
                            await publish(
                                conversation_id, GenerationDelta(self.id, offset, chunk.text)
                            )
                            self._published = self.length
                        except Unavailable:
                            self._bus_down()
                    else:
                        await self._publish_pending()
                        started = self._started_published
                    now = time.monotonic()
                    if now - last_checkpoint >= interval:
                        last_checkpoint = now
                        self._start_checkpoint()
                if chunk.usage is not None:
                    self._usage = chunk.usage
                if chunk.finish_reason is not None:
                    self._finish_reason = chunk.finish_reason
        finally:
            # closing the provider's stream closes the upstream response at once
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    def _start_checkpoint(self) -> None:
        if self._checkpoint_task is not None and not self._checkpoint_task.done():
            return  # one in flight is enough; the next interval writes the rest
        if self.length == self._checkpointed_length:
            return
        length, text = self.length, self.text
        self._checkpoint_task = asyncio.create_task(self._checkpoint(text, length))

    async def _checkpoint(self, text: str, length: int) -> None:
        try:
            await self._store.checkpoint(self.id, text)
            self._checkpointed_length = length
        except Exception as exc:  # the next interval tries again
            log.warning("checkpoint of %s failed: %s", self.id, failure_cause(exc))

    async def _finish(self, status: Status, error: ErrorInfo | None) -> TerminalEvent:
        text = self.text
        usage = self._usage or Usage()
        finish_reason = self._finish_reason if status == "complete" else None
        if status == "complete" and finish_reason is None:
            finish_reason = "stop"
        stored: Message | None = None
        deadline = time.monotonic() + self._finish_retry_s
        delay = 0.05
        while stored is None:
            try:
                stored = await self._store.finish(
                    self.id,
                    content=text,
                    status=status,
                    usage=usage if status == "complete" else self._usage,
                    finish_reason=finish_reason,
                    error=error,
                )
            except Unavailable:
                if time.monotonic() > deadline:
                    log.error("giving up storing the end of %s: database unreachable", self.id)
                    break
                # the database is down: keep the reply in memory and retry,
                # so it is stored when the database returns
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            except Exception:
                log.exception("storing the end of %s failed", self.id)
                break
        if stored is None or stored.status != status:
            # the row was finalized by someone else (e.g. marked interrupted) or
            # could not be written; report what this process knows
            stored = replace(
                self.reply,
                content=text,
                status=status,
                completed_at=utcnow(),
                usage=usage,
                finish_reason=finish_reason,
                error=error,
            )
        return terminal_event_for(stored, usage=usage)

    def _bus_down(self) -> None:
        if self._bus_retry_at == 0.0:
            log.warning(
                "bus unreachable: %s keeps streaming and publishes when it returns", self.id
            )
        self._bus_retry_at = time.monotonic() + self._bus_backoff_s
        self._bus_backoff_s = min(self._bus_backoff_s * 2, _BUS_MAX_BACKOFF_S)

    async def _publish_pending(self, *, now: bool = False) -> bool:
        """Publish what has not reached the bus yet -- the start, then the text
        from the last published offset as one delta -- unless the bus is down and
        not due for another try (``now`` tries anyway). True when nothing is left.

        One caller at a time: :meth:`run` (the start) and the reader (its first
        text) may both get here, and the start must go out once, first."""
        async with self._publish_lock:
            return await self._publish_pending_locked(now=now)

    async def _publish_pending_locked(self, *, now: bool) -> bool:
        if not now and time.monotonic() < self._bus_retry_at:
            return False
        try:
            if self._bus_retry_at != 0.0:
                # back from an outage: wait until this node hears the bus again too
                # (its pub/sub connection resubscribed), or its own followers would
                # miss the catch-up delta
                await self._bus.ping()
            if not self._started_published:
                await self._bus.publish(self.conversation_id, started_event(self.reply))
                self._started_published = True
            if self._published < self.length:
                length = self.length
                text = self.text[self._published : length]
                await self._bus.publish(
                    self.conversation_id, GenerationDelta(self.id, self._published, text)
                )
                self._published = max(self._published, length)
        except Unavailable:
            self._bus_down()
            return False
        if self._bus_retry_at != 0.0:
            log.info("bus reachable again: %s publishes live", self.id)
        self._bus_retry_at = 0.0
        self._bus_backoff_s = _BUS_MIN_BACKOFF_S
        return self._published >= self.length

    async def _publish_terminal(self, terminal: TerminalEvent) -> None:
        delay = 0.05
        for _ in range(_TERMINAL_PUBLISH_TRIES):
            try:
                # the text still unpublished goes first: the tail stays gapless
                if await self._publish_pending(now=True):
                    await self._bus.publish(self.conversation_id, terminal)
                    return
            except Unavailable:
                pass
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BUS_MAX_BACKOFF_S)
        log.error("could not publish the end of %s: bus unreachable", self.id)


def terminal_event_for(message: Message, *, usage: Usage | None = None) -> TerminalEvent:
    """The terminal event that describes a final assistant message."""
    if message.status == "complete":
        return GenerationCompleted(
            message.id, message, usage or message.usage or Usage(), message.finish_reason
        )
    if message.status == "cancelled":
        return GenerationCancelled(message.id, message)
    if message.status == "interrupted":
        return GenerationFailed(
            message.id,
            message,
            message.error
            or ErrorInfo(
                "interrupted", "the process running this reply stopped before it finished"
            ),
        )
    return GenerationFailed(
        message.id, message, message.error or ErrorInfo("provider_error", "the reply failed")
    )
