"""Bad input that used to reach a 500 or the wrong status (issue 17, item 7),
against a real JWT server: offsets written as text (huge, non-ASCII digits),
request heads over Sanic's 8 KiB, a malformed request line, binary WebSocket
frames."""

from __future__ import annotations

import asyncio
import socket
import uuid
from typing import Any

import httpx
import pytest

from sanic_chat.core.errors import ValidationFailed
from sanic_chat.core.events import parse_whole_number
from tests.server import RunningServer

from .support import bearer, new_user, recv, send, ws_connect

#: text that ``str.isdigit()`` or ``int()`` take, and no offset is
NOT_ASCII_DIGITS = ["٣", "\uff13", "²", "߃", "1٣", " 3", "+3", "1_0", "-1", "0x1"]


def _error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    return error


def _raw_request(server: RunningServer, head: bytes) -> bytes:
    """Send ``head`` on a fresh connection; what comes back until the server closes."""
    host, port = server.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


# ------------------------------------------------------------------ offsets


def test_the_shared_parser_takes_ascii_digits_only_and_bounds_the_length() -> None:
    assert parse_whole_number("0", "offset") == 0
    assert parse_whole_number("0042", "offset") == 42
    assert parse_whole_number(str(2**53), "offset") == 2**53
    for raw in [*NOT_ASCII_DIGITS, "", "5" * 5000, str(2**53 + 1), "9" * 17]:
        with pytest.raises(ValidationFailed):
            parse_whole_number(raw, "offset")


def test_an_offset_of_five_thousand_digits_is_a_422(jwt_server: RunningServer) -> None:
    headers = bearer(new_user())
    url = f"{jwt_server.base_url}/api/v1/generations/{uuid.uuid4()}/events"
    response = httpx.get(url, params={"offset": "5" * 5000}, headers=headers, timeout=10)
    assert response.status_code == 422, response.text
    assert _error(response)["code"] == "validation_error"


@pytest.mark.parametrize("raw", NOT_ASCII_DIGITS)
def test_offsets_in_other_digits_are_refused_everywhere(
    jwt_server: RunningServer, raw: str
) -> None:
    headers = bearer(new_user())
    generation_id = str(uuid.uuid4())
    base = jwt_server.base_url
    answers = [
        httpx.get(
            f"{base}/api/v1/generations/{generation_id}/events",
            params={"offset": raw},
            headers=headers,
            timeout=10,
        ),
        httpx.get(
            f"{base}/api/v1/generations/{generation_id}/events",
            params={"last_event_id": f"{generation_id}:{raw}"},
            headers=headers,
            timeout=10,
        ),
        httpx.get(
            f"{base}/api/v1/conversations/{uuid.uuid4()}/events",
            params={"last_event_id": f"{generation_id}:{raw}"},
            headers=headers,
            timeout=10,
        ),
        httpx.get(f"{base}/api/v1/conversations", params={"limit": raw}, headers=headers),
    ]
    for response in answers:
        assert response.status_code == 422, (response.request.url, response.text)
        assert _error(response)["code"] == "validation_error"


def test_a_plain_offset_still_reaches_the_reply(jwt_server: RunningServer) -> None:
    response = httpx.get(
        f"{jwt_server.base_url}/api/v1/generations/{uuid.uuid4()}/events",
        params={"offset": "12"},
        headers=bearer(new_user()),
        timeout=10,
    )
    assert response.status_code == 404  # parsed; there is no such reply


# ------------------------------------------------------------------ request heads


def test_request_headers_over_8_kib_are_a_413_not_a_401(jwt_server: RunningServer) -> None:
    big = {"X-Padding": "a" * 9000}
    for headers in (big, {**big, **bearer(new_user())}):
        response = httpx.get(f"{jwt_server.base_url}/api/v1/conversations", headers=headers)
        assert response.status_code == 413, response.text
        assert _error(response)["code"] == "too_large"


def test_a_malformed_request_line_is_a_400_not_a_401(jwt_server: RunningServer) -> None:
    answer = _raw_request(jwt_server, b"NONSENSE\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]


# ------------------------------------------------------------------ WebSocket frames


def test_a_binary_frame_is_refused_with_an_error_frame(jwt_server: RunningServer) -> None:
    async def scenario() -> None:
        async with ws_connect(jwt_server, bearer(new_user())) as ws:
            await ws.send(b'{"type": "ping"}')  # a binary frame holding a valid frame
            error = await recv(ws)
            assert error["type"] == "error", error
            assert error["code"] == "bad_request"
            assert "binary" in error["message"]
            await send(ws, type="ping")  # the connection stays usable
            assert (await recv(ws))["type"] == "pong"

    asyncio.run(scenario())
