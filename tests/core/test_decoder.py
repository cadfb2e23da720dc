"""The one decoder (``core/events.py``) refuses what no database can store,
NUL, on every path that builds typed input: a frame's bytes (WebSocket), an
HTTP body's fields (the SSE POST), a new conversation's body (REST)."""

from __future__ import annotations

import uuid

import orjson
import pytest

from sanic_chat.core.errors import TooLarge, ValidationFailed
from sanic_chat.core.events import (
    MessageCreate,
    decode_client_frame,
    frame_from_object,
    new_conversation_from_object,
)


def test_nul_content_is_refused_with_the_client_id_as_the_server_writes_it() -> None:
    client_id = uuid.uuid4()
    fields = {"type": "message.create", "client_id": str(client_id).upper(), "content": "a\x00b"}
    for decode in (
        lambda: decode_client_frame(orjson.dumps(fields)),
        lambda: frame_from_object(fields),
    ):
        with pytest.raises(ValidationFailed) as refused:
            decode()
        assert refused.value.code == "validation_error"
        assert refused.value.message == "content must not contain NUL characters"
        assert refused.value.ref == str(client_id)


def test_the_other_checks_still_come_first() -> None:
    client_id = str(uuid.uuid4())
    too_long = {"type": "message.create", "client_id": client_id, "content": "\x00" * 11}
    with pytest.raises(TooLarge):
        frame_from_object(too_long, max_content_chars=10)
    bad_conversation = {**too_long, "content": "a\x00", "conversation_id": "nope"}
    with pytest.raises(ValidationFailed, match="conversation_id"):
        frame_from_object(bad_conversation)
    ok = frame_from_object({**too_long, "content": "a\x01b"})
    assert ok == MessageCreate(client_id, "a\x01b")


@pytest.mark.parametrize("field", ["title", "model"])
def test_nul_in_a_new_conversation_is_refused(field: str) -> None:
    with pytest.raises(ValidationFailed, match=f"^{field} must not contain NUL characters$"):
        new_conversation_from_object({field: "before\x00after"})
    with pytest.raises(ValidationFailed, match="at most"):
        new_conversation_from_object({field: 7})
    new = new_conversation_from_object({"title": "t", "model": "m"})
    assert (new.title, new.model) == ("t", "m")
