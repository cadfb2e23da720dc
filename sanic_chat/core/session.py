"""ChatSession: one per connection, whatever the transport.

A transport hands it raw client frames (:meth:`ChatSession.receive`) or typed
ones (:meth:`ChatSession.handle`), and drains :attr:`ChatSession.outbox` to its
wire. Refused frames become ``error`` events; the session stays usable.
Closing a session unsubscribes it and frees its queue -- it never stops a
generation: replies belong to conversations, not connections.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from .errors import ChatError, Conflict, InternalError, NotFound
from .events import (
    ClientFrame,
    ConversationSubscribe,
    ConversationUnsubscribe,
    ErrorEvent,
    GenerationCancel,
    GenerationResume,
    MessageAccepted,
    MessageCreate,
    Ping,
    Pong,
    decode_client_frame,
    frame_from_object,
)
from .outbox import HeldListener, Outbox
from .ports import EventListener, Posted, new_conversation_id
from .records import Message

if TYPE_CHECKING:
    from .service import ChatService

log = logging.getLogger(__name__)

__all__ = ["ChatSession", "FrameGate"]

#: a hook the security layer installs: called before each decoded frame runs,
#: raising a ChatError (e.g. RateLimited) to refuse it
FrameGate = Callable[[str, ClientFrame], Awaitable[None]]


class ChatSession:
    def __init__(
        self,
        service: ChatService,
        user: str,
        *,
        gate: FrameGate | None = None,
    ) -> None:
        self.service = service
        self.user = user
        self._gate = gate
        settings = service.settings
        self.outbox = Outbox(
            max_pending_chars=settings.outbox_max_chars,
            max_pending_frames=settings.outbox_max_frames,
        )
        #: conversation id -> unsubscribe
        self._subscriptions: dict[str, Callable[[], Awaitable[None]]] = {}
        self._follows: list[Callable[[], Awaitable[None]]] = []
        self.closed = False

    async def receive(self, raw: str | bytes) -> None:
        """Decode and run one raw frame; any refusal becomes an ``error`` event."""
        frame: ClientFrame | None = None
        try:
            frame = decode_client_frame(raw, max_content_chars=self.service.max_content_chars)
            await self.handle(frame)
        except ChatError as exc:
            self.outbox.push(ErrorEvent(exc.code, exc.message, exc.ref or _ref_of(frame)))
        except Exception:
            log.exception("frame handling failed")
            internal = InternalError("the server failed to handle this frame")
            self.outbox.push(ErrorEvent(internal.code, internal.message))

    async def handle(self, frame: ClientFrame) -> None:
        """Run one typed frame; raises ChatError when refused."""
        if self._gate is not None:
            await self._gate(self.user, frame)
        if isinstance(frame, MessageCreate):
            await self._create(frame)
        elif isinstance(frame, GenerationCancel):
            await self.service.cancel(self.user, frame.generation_id)
        elif isinstance(frame, ConversationSubscribe):
            await self._subscribe(frame)
        elif isinstance(frame, ConversationUnsubscribe):
            unsubscribe = self._subscriptions.pop(frame.conversation_id, None)
            if unsubscribe is not None:
                await unsubscribe()
        elif isinstance(frame, GenerationResume):
            await self._follow(frame.generation_id, frame.offset)
        elif isinstance(frame, Ping):
            self.outbox.push(Pong())

    async def post(self, fields: Mapping[str, Any]) -> tuple[Posted, MessageAccepted]:
        """A ``message.create`` that does not come as a frame (an HTTP POST):
        ``fields`` validated once (the decoder), gated once, posted; refusals
        raise. The answer is returned, not queued, and nothing is subscribed:
        the client follows the reply on a stream of its own."""
        frame = frame_from_object(
            {**fields, "type": "message.create"},
            max_content_chars=self.service.max_content_chars,
        )
        assert isinstance(frame, MessageCreate)
        if self._gate is not None:
            await self._gate(self.user, frame)
        return await self.service.post(self.user, frame)

    async def cancel(self, frame: GenerationCancel) -> Message:
        """A ``generation.cancel`` that does not come as a frame (an HTTP POST):
        gated once, run; answers with the reply as stored."""
        if self._gate is not None:
            await self._gate(self.user, frame)
        return await self.service.cancel(self.user, frame.generation_id)

    async def _create(self, frame: MessageCreate) -> None:
        # Subscribe BEFORE posting, so that no event of the new reply can be
        # published before this connection listens.
        conversation_id = frame.conversation_id
        held: HeldListener | None = None
        if conversation_id is None:
            # a new conversation's id is derived from (user, client_id): it is
            # this user's by construction, and a resend finds the same one
            conversation_id = new_conversation_id(self.user, frame.client_id)
        elif conversation_id not in self._subscriptions:
            # Ownership is checked by the post itself, in the round trip that
            # stores the message (NotFound for a missing or foreign
            # conversation). Until it answered, what this subscription hears
            # is held, and dropped unheard if the post is refused: a
            # connection never receives events of a conversation whose
            # ownership is not checked. (One already subscribed was checked.)
            held = HeldListener(self.outbox.push)
        newly_subscribed = conversation_id not in self._subscriptions
        await self._ensure_subscribed(conversation_id, held.hear if held is not None else None)
        try:
            posted, accepted = await self.service.post(self.user, frame)
        except BaseException as exc:
            # kept only where the refusal proves ownership: a reply already
            # running in the conversation (the store checks ownership first)
            owned = held is not None and isinstance(exc, Conflict)
            if newly_subscribed and not owned:
                unsubscribe = self._subscriptions.pop(conversation_id, None)
                if unsubscribe is not None:
                    await unsubscribe()
            elif held is not None:
                held.release()
            raise
        if held is not None:
            held.release()
        if posted.created:
            self.outbox.push(accepted)  # deduplicated against the bus's copy
        else:
            self.outbox.push_answer(accepted)

    async def _subscribe(self, frame: ConversationSubscribe) -> None:
        conversation_id = frame.conversation_id
        if await self.service.get_conversation(self.user, conversation_id) is None:
            raise NotFound("no such conversation", ref=conversation_id)
        if frame.generation_id is None:
            await self._ensure_subscribed(conversation_id)
            return
        # A resume of the conversation's stream: that reply from offset, then
        # whatever was posted after it. Like every resume, the conversation's
        # live events are held until the replay and the catch-up are queued:
        # queued at once, this connection's writer would send live text ahead
        # of the reply's generation.started, and that text again in the replay.
        # (Already subscribed, the connection has the live events: the resume
        # restarts the reply from offset, as a generation.resume does.)
        live = HeldListener(self.outbox.push)
        await self._ensure_subscribed(conversation_id, live.hear)
        try:
            self._follows.extend(
                await self.service.following.follow_conversation(
                    self.user,
                    conversation_id,
                    frame.generation_id,
                    frame.offset or 0,
                    self.outbox,
                )
            )
        finally:
            live.release()

    async def _ensure_subscribed(
        self, conversation_id: str, listener: EventListener | None = None
    ) -> None:
        if conversation_id in self._subscriptions:
            return
        self._subscriptions[conversation_id] = await self.service.subscribe(
            conversation_id, listener or self.outbox.push
        )

    async def _follow(self, generation_id: str, offset: int, *, restart: bool = True) -> None:
        unsubscribe = await self.service.following.follow(
            self.user, generation_id, offset, self.outbox, restart=restart
        )
        if unsubscribe is not None:
            self._follows.append(unsubscribe)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.outbox.close()
        unsubscribes = [*self._subscriptions.values(), *self._follows]
        self._subscriptions.clear()
        self._follows.clear()
        for unsubscribe in unsubscribes:
            with contextlib.suppress(Exception):
                await unsubscribe()


def _ref_of(frame: ClientFrame | None) -> str | None:
    """The id an error about ``frame`` refers to: its client_id, else its generation_id."""
    for field in ("client_id", "generation_id", "conversation_id"):
        value = getattr(frame, field, None)
        if value is not None:
            return str(value)
    return None
