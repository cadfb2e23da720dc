"""sanic_chat/sanic_internals.py reaches below Sanic's and websockets' public API:
it is checked against one range of releases, and the names it uses are still there."""

from __future__ import annotations

import inspect
from importlib.metadata import version

import pytest
from sanic.server.websockets import impl
from sanic.server.websockets.frame import WebsocketFrameAssembler
from sanic.server.websockets.impl import WebsocketImplProtocol
from websockets.server import ServerProtocol

from sanic_chat import sanic_internals


def _minor(package: str) -> tuple[int, int]:
    major, minor = version(package).split(".")[:2]
    return int(major), int(minor)


@pytest.mark.parametrize(
    ("package", "checked"),
    [("sanic", sanic_internals.SANIC_CHECKED), ("websockets", sanic_internals.WEBSOCKETS_CHECKED)],
)
def test_the_installed_release_is_one_sanic_internals_was_checked_against(
    package: str, checked: tuple[tuple[int, int], tuple[int, int]]
) -> None:
    low, high = checked
    installed = _minor(package)
    if not low <= installed < high:
        pytest.fail(
            f"{package} {version(package)} is outside {low}..{high} (excluded), the range "
            "sanic_chat/sanic_internals.py was checked against: re-read each part of it "
            "against this release (its header says what each works around and when to delete "
            "it), then move SANIC_CHECKED / WEBSOCKETS_CHECKED and the pin in pyproject.toml"
        )


def test_what_sanic_internals_works_around_is_still_there() -> None:
    """If one of these fails, upstream changed: the workaround may be obsolete."""
    source = inspect.getsource(impl)
    data_received = source[source.index("    def data_received(") :].split("\n    def ")[0]
    # a task per network read, no pause of reading
    assert "create_task" in data_received and "pause" not in data_received
    # recv's helper tasks
    recv = inspect.getsource(WebsocketImplProtocol.recv)
    assert "create_task" in recv and "asyncio.wait" in recv


def test_the_names_sanic_internals_uses_are_there() -> None:
    ws = WebsocketImplProtocol(ServerProtocol())
    for name in (
        "ws_proto",
        "io_proto",
        "assembler",
        "recv_lock",
        "recv_cancel",
        "pause_frame_fut",
    ):
        assert hasattr(ws, name), name
    for name in ("async_data_received", "async_eof_received", "connection_lost", "fail_connection"):
        assert callable(getattr(ws, name)), name
    assert {"message_complete", "get_in_progress", "decoder", "chunks", "protocol"} <= set(
        WebsocketFrameAssembler.__slots__
    )
    for name in ("receive_data", "receive_eof", "data_to_send", "events_received"):
        assert callable(getattr(ServerProtocol, name)), name
