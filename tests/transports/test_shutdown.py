"""A graceful shutdown (SIGTERM) on SQLite and PostgreSQL: running replies
reach every open stream to their end, then WebSocket clients are told 1001
(go away: reconnect and resume) and SSE streams end, so the server exits
without waiting out its grace period."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from .support import (
    BACKENDS,
    Reassembly,
    http_client,
    server_on,
    sse_stream,
    ws_client,
)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_shutdown_drains_replies_to_open_streams_then_ends_them(
    backend: str, tmp_path: Path
) -> None:
    with server_on(backend, tmp_path) as server:
        async with http_client(server) as client, ws_client(server) as ws:
            accepted = await ws.create("finish before you go", model="slow")
            generation_id = accepted["generation_id"]
            path = f"/api/v1/conversations/{accepted['conversation_id']}/events"
            async with sse_stream(client, path) as sse:
                await ws.recv_type("generation.delta")
                server.process.send_signal(signal.SIGTERM)
                stopping = time.monotonic()
                terminal = await sse.until_terminal(generation_id)
                assert await sse.next_data(timeout=15) is None  # the stream ended
            assert terminal["type"] == "generation.completed"
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await ws.recv(timeout=15)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
            text = Reassembly(generation_id).add_all(ws.received)
            assert text.text == terminal["message"]["content"]
        exit_code = await asyncio.to_thread(server.process.wait, 20)
        print(f"\n[measure] {backend}: exited {time.monotonic() - stopping:.1f} s after SIGTERM")
        assert exit_code == 0
