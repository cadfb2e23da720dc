"""The floor: the least a Sanic server can do to relay an upstream stream over
sanic-chat's frames. No database, no bus, no validation, no outbox.

    python -m benchmarks.floor --port 8100 --upstream http://127.0.0.1:9001/v1

``/ws``: on ``message.create`` it answers ``message.accepted`` and
``generation.started`` at once, streams ``{upstream}/chat/completions``
(OpenAI format, one shared ``httpx.AsyncClient``, httpx-sse) as
``generation.delta`` frames with code-point offsets, then
``generation.completed``. The SSE pair does the same over
``POST /api/v1/conversations``, ``POST /api/v1/conversations/{id}/messages``
and ``GET /api/v1/conversations/{id}/events``. The frames are the ones
sanic-chat sends, so the same load generator measures both, and whatever
sanic-chat costs beyond the floor is its own work: persistence, the bus,
validation, resume.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from httpx_sse import aconnect_sse
from sanic import Request, Sanic
from sanic.response import HTTPResponse, raw

__all__ = ["create_floor_app", "encode_sse", "main"]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _message(
    message_id: str, conversation_id: str, role: str, content: str, status: str, model: str | None
) -> dict[str, Any]:
    now = _now()
    return {
        "id": message_id,
        "conversation_id": conversation_id,
        "role": role,
        "content": content,
        "status": status,
        "model": model,
        "created_at": now,
        "completed_at": now if status != "streaming" else None,
    }


def encode_sse(event: dict[str, Any]) -> bytes:
    """An SSE event as sanic-chat writes it: ``id`` is ``{generation_id}:{end offset}``."""
    kind = event["type"]
    head = b""
    if kind == "generation.delta":
        head = b"id: %s:%d\r\n" % (
            event["generation_id"].encode(),
            event["offset"] + len(event["text"]),
        )
    elif kind == "generation.started":
        head = b"id: %s:0\r\n" % event["generation_id"].encode()
    elif kind.startswith("generation."):
        end = len(event["message"]["content"])
        head = b"id: %s:%d\r\n" % (event["generation_id"].encode(), end)
    return b"%sevent: %s\r\ndata: %s\r\n\r\n" % (head, kind.encode(), orjson.dumps(event))


def create_floor_app(
    upstream: str,
    *,
    upstream_model: str = "fake",
    name: str = "floor",
    reuse_upstream: bool = False,
) -> Sanic[Any, Any]:
    """``reuse_upstream``: read each upstream body to its end so that its
    connection goes back to the pool. Off by default, to match sanic-chat's
    providers, which stop at ``[DONE]`` (and so open a connection per reply)."""
    app: Sanic[Any, Any] = Sanic(name)
    app.config.WEBSOCKET_PING_INTERVAL = 20
    app.config.WEBSOCKET_PING_TIMEOUT = 20
    app.config.MOTD = False
    app.config.AUTO_EXTEND = False  # no Sanic Extensions: the floor does nothing extra
    url = upstream.rstrip("/") + "/chat/completions"
    #: SSE: conversation id -> its open event streams' queues
    streams: dict[str, list[asyncio.Queue[bytes | None]]] = {}
    relays: set[asyncio.Task[None]] = set()  # SSE replies run past their POST

    @app.before_server_start
    async def open_client(app: Sanic[Any, Any]) -> None:
        app.ctx.http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=4096, max_keepalive_connections=256),
            timeout=httpx.Timeout(30.0, read=60.0),
        )

    @app.after_server_stop
    async def close_client(app: Sanic[Any, Any]) -> None:
        await app.ctx.http.aclose()

    async def relay(frame: dict[str, Any], conversation_id: str, send: Any) -> None:
        """accepted, started, deltas, completed -- each through ``await send(event)``."""
        client_id = frame.get("client_id")
        content = frame.get("content") or ""
        model = frame.get("model")
        user_id, reply_id = str(uuid.uuid4()), str(uuid.uuid4())
        await send(
            {
                "type": "message.accepted",
                "client_id": client_id,
                "conversation_id": conversation_id,
                "message": _message(user_id, conversation_id, "user", content, "complete", model),
                "generation_id": reply_id,
            }
        )
        await send(
            {
                "type": "generation.started",
                "generation_id": reply_id,
                "conversation_id": conversation_id,
                "message_id": reply_id,
                "reply_to": user_id,
                "model": model,
            }
        )
        parts: list[str] = []
        offset = 0
        usage: dict[str, Any] = {"input_tokens": None, "output_tokens": None}
        finish_reason = "stop"
        body = {
            "model": upstream_model,
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": content}],
        }
        try:
            async with aconnect_sse(app.ctx.http, "POST", url, json=body) as source:
                async for event in source.aiter_sse():
                    if event.data == "[DONE]":
                        if reuse_upstream:
                            continue  # read to the body's end: the connection is pooled
                        break  # as sanic-chat's provider does: the connection is closed
                    chunk = orjson.loads(event.data)
                    if chunk.get("usage"):
                        usage = {
                            "input_tokens": chunk["usage"].get("prompt_tokens"),
                            "output_tokens": chunk["usage"].get("completion_tokens"),
                        }
                    for choice in chunk.get("choices") or ():
                        text = (choice.get("delta") or {}).get("content")
                        if choice.get("finish_reason"):
                            finish_reason = choice["finish_reason"]
                        if text:
                            await send(
                                {
                                    "type": "generation.delta",
                                    "generation_id": reply_id,
                                    "offset": offset,
                                    "text": text,
                                }
                            )
                            parts.append(text)
                            offset += len(text)
        except (httpx.HTTPError, orjson.JSONDecodeError) as exc:
            await send(
                {
                    "type": "generation.failed",
                    "generation_id": reply_id,
                    "message": _message(
                        reply_id, conversation_id, "assistant", "".join(parts), "failed", model
                    ),
                    "error": {"code": "provider_error", "message": str(exc)},
                }
            )
            return
        message = _message(
            reply_id, conversation_id, "assistant", "".join(parts), "complete", model
        )
        message["reply_to"] = user_id
        await send(
            {
                "type": "generation.completed",
                "generation_id": reply_id,
                "message": message,
                "usage": usage,
                "finish_reason": finish_reason,
            }
        )

    # ------------------------------------------------------------------ WebSocket

    @app.websocket("/ws")
    async def ws(request: Request, ws: Any) -> None:
        tasks: set[asyncio.Task[None]] = set()

        async def send(event: dict[str, Any]) -> None:
            await ws.send(orjson.dumps(event).decode())

        try:
            async for raw_frame in ws:
                frame = orjson.loads(raw_frame)
                kind = frame.get("type")
                if kind == "message.create":
                    conversation_id = frame.get("conversation_id") or str(uuid.uuid4())
                    task = asyncio.create_task(relay(frame, conversation_id, send))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                elif kind == "ping":
                    await ws.send('{"type":"pong"}')
        finally:
            for task in tasks:
                task.cancel()

    # ------------------------------------------------------------------ SSE

    @app.post("/api/v1/conversations")
    async def create_conversation(request: Request) -> HTTPResponse:
        conversation_id = str(uuid.uuid4())
        now = _now()
        body = {
            "id": conversation_id,
            "title": None,
            "model": None,
            "created_at": now,
            "updated_at": now,
        }
        return raw(orjson.dumps(body), status=201, content_type="application/json")

    @app.post("/api/v1/conversations/<conversation_id:str>/messages")
    async def post_message(request: Request, conversation_id: str) -> HTTPResponse:
        frame = orjson.loads(request.body)
        accepted: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        async def send(event: dict[str, Any]) -> None:
            if not accepted.done():
                accepted.set_result(event)
            payload = encode_sse(event)
            for q in streams.get(conversation_id, ()):
                q.put_nowait(payload)

        task = asyncio.create_task(relay(frame, conversation_id, send))
        relays.add(task)
        task.add_done_callback(relays.discard)
        first = await accepted
        answer = {
            "message": first["message"],
            "generation_id": first["generation_id"],
            "conversation_id": conversation_id,
            "created": True,
        }
        return raw(orjson.dumps(answer), status=202, content_type="application/json")

    @app.get("/api/v1/conversations/<conversation_id:str>/events")
    async def events(request: Request, conversation_id: str) -> None:
        q: asyncio.Queue[bytes | None] = asyncio.Queue()
        streams.setdefault(conversation_id, []).append(q)
        try:
            response = await request.respond(
                content_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
            assert response is not None
            await response.send(b"retry: 1000\r\n: connected\r\n\r\n")
            while True:
                try:
                    payload = await asyncio.wait_for(q.get(), 15.0)
                except TimeoutError:
                    await response.send(b": heartbeat\r\n\r\n")
                    continue
                if payload is None:
                    break
                await response.send(payload)
        finally:
            listeners = streams.get(conversation_id, [])
            if q in listeners:
                listeners.remove(q)
            if not listeners:
                streams.pop(conversation_id, None)

    @app.get("/healthz")
    async def healthz(request: Request) -> HTTPResponse:
        return raw(b'{"status":"ok"}', content_type="application/json")

    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.floor", description=__doc__.splitlines()[0]
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100)
    p.add_argument(
        "--upstream", default="http://127.0.0.1:9001/v1", help="an OpenAI-style base URL"
    )
    p.add_argument("--upstream-model", default="fake")
    p.add_argument(
        "--reuse-upstream",
        action="store_true",
        help="read each upstream body to its end so its connection is pooled",
    )
    a = p.parse_args(argv)
    app = create_floor_app(
        a.upstream, upstream_model=a.upstream_model, reuse_upstream=a.reuse_upstream
    )
    print(f"floor: serving on http://{a.host}:{a.port}/ relaying {a.upstream}", flush=True)
    app.run(host=a.host, port=a.port, single_process=True, access_log=False, motd=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
