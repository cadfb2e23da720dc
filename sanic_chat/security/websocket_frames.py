"""Fail a WebSocket on a text frame that is not UTF-8, as RFC 6455 §8.1 says.

Sanic's frame assembler (``sanic.server.websockets.frame``, Sanic 25.12)
decodes text frames with a strict UTF-8 decoder but does not handle the
error: the ``UnicodeDecodeError`` escapes a background task, each such frame
prints a traceback into the server log (a log flood for whoever sends them),
the frame is silently dropped, and the peer never learns why. Found by
``tests/security/test_hostile_frames.py``.

:func:`install` has the assembler's ``put`` wrapped once per process (in
``sanic_internals.py``, the one module that touches Sanic's internals) so that
such a frame fails the connection with close code 1007 (invalid frame payload
data). The wrapper is inert for every well-formed frame.
"""

from __future__ import annotations

from ..sanic_internals import fail_on_bad_utf8

__all__ = ["INVALID_PAYLOAD", "install"]

INVALID_PAYLOAD = 1007


def install() -> None:
    fail_on_bad_utf8(INVALID_PAYLOAD, "text frame is not valid UTF-8")
