"""The client side of the WebSocket as the end-to-end tests speak it: a
``message.create`` to send, frames to read, a reply's text to join."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

TERMINAL = {"generation.completed", "generation.cancelled", "generation.failed"}


def create(content: str = "hello", **fields: Any) -> dict[str, Any]:
    """A ``message.create`` with a fresh ``client_id`` (``fields`` add to it)."""
    return {"type": "message.create", "client_id": str(uuid.uuid4()), "content": content, **fields}


async def recv(ws: Any, timeout: float = 10.0) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return frame


async def until_terminal(ws: Any, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Every frame up to and including the first terminal event."""
    frames = []
    while True:
        frame = await recv(ws, timeout)
        frames.append(frame)
        if frame["type"] in TERMINAL:
            return frames


def joined_text(frames: list[dict[str, Any]]) -> str:
    """The deltas' text, asserting each starts where the last ended."""
    text = ""
    for frame in frames:
        if frame["type"] == "generation.delta":
            assert frame["offset"] == len(text), "gap or overlap in offsets"
            text += frame["text"]
    return text
