"""Smoke test of a freshly installed sanic-chat, run by .ci/run in a virtualenv
that has only the base install (`pip install .`, no extras): so it may import
only the standard library and what the base install declares (httpx,
websockets).

Usage: python smoke_chat.py http://127.0.0.1:PORT [SERVER_PID]

Waits for /readyz to answer 200, checks that the browser page and its module
are served (the wheel carries its web files), then completes one WebSocket chat
against the default offline `demo` model: message.create -> message.accepted ->
generation.started -> deltas (contiguous offsets) -> generation.completed whose
stored content is exactly the streamed text. Exits non-zero with one line
saying what went wrong."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid

import httpx
import websockets

READY_TIMEOUT_S = 60.0
CHAT_TIMEOUT_S = 60.0


def fail(message: str) -> None:
    print(f"smoke: FAILED: {message}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def alive(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_ready(base_url: str, server_pid: int | None) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = "no answer"
    while time.monotonic() < deadline:
        if not alive(server_pid):
            fail(f"the server (pid {server_pid}) exited before /readyz answered 200")
        try:
            response = httpx.get(f"{base_url}/readyz", timeout=2.0)
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if response.status_code == 200:
                print(f"smoke: /readyz 200 {response.text.strip()}", flush=True)
                return
            last = f"{response.status_code} {response.text.strip()}"
        time.sleep(0.2)
    fail(f"/readyz did not answer 200 within {READY_TIMEOUT_S:.0f} s (last: {last})")


def check_page(base_url: str) -> None:
    for path in ("/", "/static/sanic-chat.js"):
        response = httpx.get(f"{base_url}{path}", timeout=5.0)
        if response.status_code != 200 or not response.content:
            fail(f"GET {path} answered {response.status_code} ({len(response.content)} bytes)")
        print(f"smoke: GET {path} 200 ({len(response.content)} bytes)", flush=True)


async def chat(ws_url: str) -> None:
    client_id = str(uuid.uuid4())
    seen: list[str] = []
    text = ""
    generation_id = None
    async with websockets.connect(ws_url) as ws:
        await ws.send(
            json.dumps({"type": "message.create", "client_id": client_id, "content": "Hello!"})
        )
        while True:
            event = json.loads(await ws.recv())
            kind = event.get("type")
            if kind in ("error", "generation.failed", "generation.cancelled"):
                fail(f"the chat ended with {json.dumps(event)}")
            if kind == "message.accepted":
                if event.get("client_id") != client_id:
                    fail(f"message.accepted for another client_id: {json.dumps(event)}")
                generation_id = event.get("generation_id")
            elif kind == "generation.started":
                if "message.accepted" not in seen:
                    fail("generation.started came before message.accepted")
                generation_id = event["generation_id"]
            elif kind == "generation.delta":
                if "generation.started" not in seen:
                    fail("a delta came before generation.started")
                if event["offset"] != len(text):
                    fail(f"delta at offset {event['offset']}, expected {len(text)}")
                text += event["text"]
            elif kind == "generation.completed":
                if event["generation_id"] != generation_id:
                    fail(f"completed another generation: {json.dumps(event)}")
                if not text:
                    fail("generation.completed without any delta")
                if event["message"]["content"] != text:
                    fail("the stored reply differs from the streamed text")
                seen.append(kind)
                break
            else:
                continue  # clients ignore frame types they do not know
            seen.append(kind)
    print(
        f"smoke: chat completed: {seen.count('generation.delta')} deltas, "
        f"{len(text)} code points: {text[:60]!r}...",
        flush=True,
    )


def main() -> None:
    if len(sys.argv) not in (2, 3):
        fail("usage: smoke_chat.py http://127.0.0.1:PORT [SERVER_PID]")
    base_url = sys.argv[1].rstrip("/")
    server_pid = int(sys.argv[2]) if len(sys.argv) == 3 else None
    wait_ready(base_url, server_pid)
    check_page(base_url)
    ws_url = "ws" + base_url.removeprefix("http") + "/ws"
    try:
        asyncio.run(asyncio.wait_for(chat(ws_url), CHAT_TIMEOUT_S))
    except TimeoutError:
        fail(f"the chat did not complete within {CHAT_TIMEOUT_S:.0f} s")


if __name__ == "__main__":
    main()
