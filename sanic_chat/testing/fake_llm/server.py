"""The fake LLM server: routes, directives, paced streams and faults (timer
callbacks on :mod:`.http` connections), on the running loop
(:func:`serve_fake_llm`) or in a thread of its own (:class:`FakeLLM`)."""

from __future__ import annotations

import asyncio
import re
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from ...providers.demo import demo_reply_words
from .directives import DirectiveError, FakeOptions, Fault
from .formats import FORMATS, Reply, WireFormat
from .http import HttpConnection, Request

DIRECTIVE_HEADER = "x-fake-llm"
_MAGIC = re.compile(r"\[fake-llm:?([^\]]*)\]")
_ROUTES = {
    "/v1/chat/completions": "openai",
    "/chat/completions": "openai",
    "/v1/messages": "anthropic",
    "/api/chat": "ollama",
}


def reply_tokens(prompt: str, count: int) -> list[str]:
    """The tokens the fake answers ``prompt`` with: words, each but the last
    followed by a space."""
    words = demo_reply_words(prompt, count)
    return [word + " " for word in words[:-1]] + words[-1:]


def reply_text(prompt: str, count: int) -> str:
    return "".join(reply_tokens(prompt, count))


# --------------------------------------------------------------------------- stats


@dataclass(slots=True)
class FakeStats:
    requests: int = 0
    attempts: Counter[str] = field(default_factory=Counter)
    active_streams: int = 0
    streams_completed: int = 0
    # the client went away while its response was still being written
    disconnects: int = 0
    disconnects_by_key: Counter[str] = field(default_factory=Counter)
    cuts: int = 0
    last_request: dict[str, Any] | None = None
    last_requests: dict[str, dict[str, Any]] = field(default_factory=dict)

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "attempts": dict(self.attempts),
            "active_streams": self.active_streams,
            "streams_completed": self.streams_completed,
            "disconnects": self.disconnects,
            "disconnects_by_key": dict(self.disconnects_by_key),
            "cuts": self.cuts,
            "last_request": self.last_request,
            "last_requests": dict(self.last_requests),
        }


# --------------------------------------------------------------------------- requests


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _turns(vendor: str, body: dict[str, Any]) -> list[tuple[str, str]]:
    turns: list[tuple[str, str]] = []
    if vendor == "anthropic" and body.get("system"):
        turns.append(("system", _text(body["system"])))
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            turns.append((str(message.get("role", "")), _text(message.get("content"))))
    return turns


def _max_tokens(vendor: str, body: dict[str, Any]) -> int | None:
    if vendor == "openai":
        value = body.get("max_completion_tokens", body.get("max_tokens"))
    elif vendor == "anthropic":
        value = body.get("max_tokens")
    else:
        value = (body.get("options") or {}).get("num_predict")
    return value if isinstance(value, int) and value > 0 else None


# --------------------------------------------------------------------------- server


class FakeLLMServer:
    """The fake server on the running event loop; see :func:`serve_fake_llm`."""

    def __init__(self, options: FakeOptions, *, api_key: str | None = None) -> None:
        self.options = options
        self.api_key = api_key
        self.stats = FakeStats()
        self._server: asyncio.Server | None = None
        self._connections: set[HttpConnection] = set()
        self.host = "127.0.0.1"
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpConnection(self.dispatch, self._connections),
            host,
            port,
            backlog=4096,
            reuse_address=True,
        )
        self.host, self.port = self._server.sockets[0].getsockname()[:2]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for connection in list(self._connections):
                connection.abort()
            await self._server.wait_closed()
            self._server = None

    def reset(self) -> None:
        # streams still running will end, and decrement the new count
        self.stats = FakeStats(active_streams=self.stats.active_streams)

    # -- dispatch

    def dispatch(self, conn: HttpConnection, request: Request) -> None:
        path = request.path.partition("?")[0]
        if path == "/_fake/stats" and request.method == "GET":
            conn.send(200, orjson.dumps(self.stats.snapshot()))
            return
        if path == "/_fake/reset" and request.method == "POST":
            self.reset()
            conn.send(200, b'{"ok":true}')
            return
        if path == "/healthz":
            conn.send(200, b'{"ok":true}')
            return
        if path == "/v1/models" and request.method == "GET":
            model = {"id": "fake", "object": "model", "created": 0, "owned_by": "fake-llm"}
            conn.send(200, orjson.dumps({"object": "list", "data": [model]}))
            return
        vendor = _ROUTES.get(path)
        if vendor is None:
            conn.send(404, orjson.dumps({"error": f"no route {path}"}))
            return
        if request.method != "POST":
            conn.send(405, orjson.dumps({"error": "use POST"}))
            return
        self._complete(conn, request, vendor)

    def _complete(self, conn: HttpConnection, request: Request, vendor: str) -> None:
        wire = FORMATS[vendor]

        def refuse(status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
            body = wire.error_body(status, wire.error_type(status), message)
            conn.send(status, body, wire.content_type, headers)

        try:
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            refuse(400, "the request body is not valid JSON")
            return
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            refuse(400, "messages: a list is required")
            return
        turns = _turns(vendor, body)
        last_user = next((text for role, text in reversed(turns) if role == "user"), "")
        try:
            options = self.options.with_directives(request.headers.get(DIRECTIVE_HEADER, ""))
            for found in _MAGIC.finditer(last_user):
                options = options.with_directives(found.group(1))
        except DirectiveError as exc:
            refuse(400, str(exc))
            return

        stats = self.stats
        bucket = options.bucket
        stats.requests += 1
        stats.attempts[bucket] += 1
        attempt = stats.attempts[bucket]
        seen = {"path": request.path, "headers": request.headers, "body": body}
        stats.last_request = seen
        stats.last_requests[bucket] = seen

        if self.api_key is not None and not _authorized(vendor, request.headers, self.api_key):
            # like some vendors, echo what was sent: clients must not pass it on
            sent = request.headers.get("x-api-key") or request.headers.get("authorization", "")
            refuse(401, f"Incorrect API key provided: {sent}")
            return
        fault = options.fault
        if fault is not None and options.fail_first and attempt > options.fail_first:
            fault = None
        if fault is not None and fault.kind == "status":
            status = int(fault.value)
            headers = {"retry-after": _number(options.retry_after)} if status == 429 else None
            refuse(status, f"fake-llm injected status {status}", headers)
            return
        if vendor == "anthropic" and not isinstance(body.get("max_tokens"), int):
            refuse(400, "max_tokens: Field required")
            return

        prompt = _MAGIC.sub("", last_user).strip()
        count = options.tokens
        limit = _max_tokens(vendor, body)
        truncated = limit is not None and limit < count
        if limit is not None:
            count = min(count, limit)
        reply = Reply(
            model=str(body.get("model") or "fake"),
            tokens=reply_tokens(prompt, count),
            input_tokens=sum(len(text.split()) for _, text in turns),
            truncated=truncated,
            include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
        )
        fmt = wire(reply)
        streaming = body.get("stream", vendor == "ollama")
        if not streaming:
            loop = asyncio.get_running_loop()
            conn.timer = loop.call_later(
                options.ttft_ms / 1000.0, conn.send, 200, fmt.complete(), wire.content_type
            )
            return
        _Stream(self, conn, fmt, options, fault, bucket).start()


def _authorized(vendor: str, headers: Mapping[str, str], key: str) -> bool:
    if vendor == "anthropic":
        return headers.get("x-api-key") == key
    return headers.get("authorization") == f"Bearer {key}"


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else str(value)


class _Stream:
    """One streamed reply, driven by timer callbacks: token ``i`` is due at
    ``t0 + i / tps`` (a stall moves ``t0``); tokens already due go out together
    in one write, one frame each."""

    __slots__ = (
        "bucket",
        "conn",
        "fault",
        "fault_index",
        "fmt",
        "index",
        "interval",
        "loop",
        "options",
        "server",
        "t0",
        "used_fault",
    )

    def __init__(
        self,
        server: FakeLLMServer,
        conn: HttpConnection,
        fmt: WireFormat,
        options: FakeOptions,
        fault: Fault | None,
        bucket: str,
    ) -> None:
        self.server = server
        self.conn = conn
        self.fmt = fmt
        self.options = options
        self.fault = fault
        self.fault_index = (
            -1 if fault is None else options.at if fault.kind == "stall" else int(fault.value)
        )
        self.used_fault = False
        self.bucket = bucket
        self.index = 0
        self.interval = 1.0 / options.tps if options.tps > 0 else 0.0
        self.loop = asyncio.get_running_loop()
        self.t0 = 0.0

    def start(self) -> None:
        self.server.stats.active_streams += 1
        self.conn.body = self
        self.conn.start_stream(self.fmt.stream_content_type)
        head = self.fmt.head()
        if head:
            self.conn.write_chunk(head)
        self.t0 = self.loop.time() + self.options.ttft_ms / 1000.0
        self.conn.timer = self.loop.call_at(self.t0, self.step)

    def step(self) -> None:
        conn = self.conn
        conn.timer = None
        if conn.closed:
            return
        if conn.paused:
            conn.waiting = True
            return
        tokens = self.fmt.reply.tokens
        out = bytearray()
        now = self.loop.time()
        while True:
            i = self.index
            if i == self.fault_index and not self.used_fault:
                assert self.fault is not None
                self.used_fault = True
                kind = self.fault.kind
                if kind == "cut":
                    conn.write_chunk(bytes(out))
                    self.finish()
                    self.server.stats.cuts += 1
                    conn.cut()
                    return
                if kind == "stall":
                    conn.write_chunk(bytes(out))
                    self.t0 += self.fault.value
                    conn.timer = self.loop.call_at(now + self.fault.value, self.step)
                    return
                if kind == "malformed":
                    out += self.fmt.malformed_frame()
                elif kind == "error":
                    error_type = self.options.error_type or (
                        "overloaded_error" if self.fmt.name == "anthropic" else "server_error"
                    )
                    out += self.fmt.error_frame(error_type, "fake-llm injected error")
                    conn.write_chunk(bytes(out))
                    self.end()
                    return
            if i >= len(tokens):
                out += self.fmt.tail()
                conn.write_chunk(bytes(out))
                self.end()
                return
            out += self.fmt.token(tokens[i])
            self.index = i + 1
            due = self.t0 + self.index * self.interval
            if due > now:
                conn.write_chunk(bytes(out))
                conn.timer = self.loop.call_at(due, self.step)
                return

    def resume(self) -> None:
        self.step()

    def end(self) -> None:
        self.finish()
        self.server.stats.streams_completed += 1
        self.conn.end_stream()

    def finish(self) -> None:
        self.server.stats.active_streams -= 1
        self.conn.body = None

    def lost(self) -> None:
        """The client went away mid-stream."""
        stats = self.server.stats
        stats.active_streams -= 1
        stats.disconnects += 1
        stats.disconnects_by_key[self.bucket] += 1
        self.conn.body = None


# --------------------------------------------------------------------------- running it


def _options(options: Mapping[str, Any]) -> tuple[FakeOptions, str | None]:
    """FakeOptions (and the required API key) from keyword options: ttft_ms,
    tokens_per_second / tps, reply_tokens / tokens, fault, directives, api_key."""
    opts = dict(options)
    api_key = opts.pop("api_key", None)
    directives = opts.pop("directives", None) or ""
    base = FakeOptions()
    parts = []
    for name, value in opts.items():
        if value is None:
            continue
        parts.append(f"{name}={value}")
    result = base.with_directives(";".join(parts))
    if directives:
        result = result.with_directives(directives)
    return result, api_key


async def serve_fake_llm(host: str = "127.0.0.1", port: int = 0, **options: Any) -> FakeLLMServer:
    """Start the fake on the running loop; ``await server.close()`` stops it."""
    fake_options, api_key = _options(options)
    server = FakeLLMServer(fake_options, api_key=api_key)
    await server.start(host, port)
    return server


class FakeLLM:
    """The fake on its own thread and event loop, for tests::

    with FakeLLM(ttft_ms=0, tps=0) as fake:
        fake.base_url   # http://127.0.0.1:<free port>
        fake.stats()    # what GET /_fake/stats answers
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **options: Any) -> None:
        self._host, self._port = host, port
        self._options = options
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: FakeLLMServer | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start() it first"
        return self._server.base_url

    def start(self) -> FakeLLM:
        self._thread = threading.Thread(target=self._run, name="fake-llm", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            self._server = loop.run_until_complete(
                serve_fake_llm(self._host, self._port, **self._options)
            )
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._server.close())
            loop.close()

    def _call(self, fn: Any) -> Any:
        assert self._loop is not None

        async def call() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(5)

    def stats(self) -> dict[str, Any]:
        assert self._server is not None
        server = self._server
        return self._call(lambda: orjson.loads(orjson.dumps(server.stats.snapshot())))  # type: ignore[no-any-return]

    def reset(self) -> None:
        assert self._server is not None
        self._call(self._server.reset)

    def close(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None

    def __enter__(self) -> FakeLLM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
