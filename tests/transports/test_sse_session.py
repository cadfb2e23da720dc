"""The SSE POST routes go through a session, like a WebSocket frame: validated by
the one decoder, gated once (message rate for a post, frame rate for a cancel),
then run by the core."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server import RunningServer

from .support import http_client, new_conversation, post_message, server_on


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp: Path = tmp_path_factory.mktemp("sse-session")
    with server_on("sqlite", tmp, {"SANIC_CHAT_FRAME_RATE_LIMIT": "2/minute"}) as server:
        yield server


async def test_a_cancel_over_http_pays_the_frame_rate_like_a_websocket_cancel(
    limited: RunningServer,
) -> None:
    async with http_client(limited) as client:
        conversation_id = await new_conversation(client)
        posted = await post_message(client, conversation_id, "a long one please")
        assert posted.status_code == 202, posted.text
        path = f"/api/v1/generations/{posted.json()['generation_id']}/cancel"
        answers = [await client.post(path) for _ in range(3)]
        # the second finds it ended: still 202; the third is one over the frame rate
        assert [a.status_code for a in answers] == [202, 202, 429]
        assert answers[2].json()["error"]["code"] == "rate_limited"


async def test_a_post_over_http_is_validated_by_the_decoder(limited: RunningServer) -> None:
    async with http_client(limited) as client:
        conversation_id = await new_conversation(client)
        answer = await post_message(client, conversation_id, "")
        assert answer.status_code == 422
        assert answer.json()["error"]["code"] == "validation_error"


async def test_a_post_over_http_with_nul_is_refused_with_its_client_id(
    limited: RunningServer,
) -> None:
    client_id = str(uuid.uuid4())
    async with http_client(limited) as client:
        conversation_id = await new_conversation(client)
        answer = await post_message(
            client, conversation_id, "a\u0000b", client_id=client_id.upper()
        )
        assert answer.status_code == 422
        assert answer.json()["error"] == {
            "code": "validation_error",
            "message": "content must not contain NUL characters",
        }
