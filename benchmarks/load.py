"""The load generator: many chat users per process, over WebSocket, SSE or both.

    python -m benchmarks.load --url http://127.0.0.1:8000 --users 100 \\
        --duration 60 --think-time 5 --transport ws --out benchmarks/out/seed

Each user opens one connection, then sends messages in one conversation: it
waits for the reply's terminal event, thinks (``--think-time`` ± 50 %), and
sends the next, until ``--duration`` is over; the reply in flight then runs to
its end. Per message it measures the time to ``message.accepted`` (the commit),
to the first ``generation.delta`` (TTFC) and to the terminal event, and checks
offsets for lost or duplicated text (see :mod:`benchmarks.frames`). A dropped
connection is counted and resumed by offset, as a real client would. After the
run, every acknowledged message is looked up through the REST history API.

Lean on purpose, so that on a small machine the generator is not what is
measured: one uvloop event loop per process, orjson, no per-frame tasks or
timers, and ``--workers N`` processes for more cores. Its own event-loop lag is
reported, so a saturated generator shows.

Outputs in ``--out``: ``{label}.json`` (config, summary, timeline, raw rows),
``{label}.md`` and two PNG plots.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import multiprocessing
import queue
import random
import socket
import sys
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from . import report
from .frames import MessageResult, ReplyTracker, message_create

__all__ = ["LoadConfig", "main", "parse_args", "run_load", "write_outputs"]


@dataclass
class LoadConfig:
    url: str = "http://127.0.0.1:8000"
    users: int = 10
    spawn_rate: float = 20.0  # users connected per second
    duration: float = 30.0  # seconds during which new messages are sent
    think_time: float = 5.0  # mean seconds between a reply's end and the next message
    transport: str = "ws"  # ws | sse | mix
    ws_share: float = 0.5  # with mix: the share of WebSocket users
    model: str | None = None
    tokens: list[str] = field(default_factory=list)  # bearer tokens, user i uses i % len
    label: str = "sanic-chat"
    out: str | None = None
    workers: int = 1
    reply_timeout: float = 60.0
    max_messages: int = 0  # per user; 0: as many as the duration allows
    slow_share: float = 0.0  # share of users that read slowly
    slow_delay: float = 0.05  # seconds a slow user waits before each read
    check_db: bool = True
    plots: bool = True
    raw: bool = True  # keep the per-message rows in the JSON
    progress: bool = True
    seed: int = 1
    upstream_ttft_ms: float | None = None
    upstream_stream_ms: float | None = None
    warmup: float = 0.0  # messages sent before this second are left out of the latencies

    @property
    def ws_url(self) -> str:
        base = self.url.rstrip("/")
        if base.startswith("https://"):
            return "wss://" + base[len("https://") :] + "/ws"
        return "ws://" + base.removeprefix("http://") + "/ws"


def _share(index: int, share: float) -> bool:
    """Exactly ``share`` of consecutive indexes, spread evenly."""
    return int((index + 1) * share) > int(index * share)


# --------------------------------------------------------------------------- one worker


@dataclass
class _Stats:
    active: int = 0
    in_flight: int = 0
    sent: int = 0
    completed: int = 0
    errors: int = 0
    connect_errors: int = 0
    drops: int = 0
    drops_by_code: Counter[str] = field(default_factory=Counter)
    connect_error_kinds: Counter[str] = field(default_factory=Counter)
    recent_ttfc: list[float] = field(default_factory=list)


class _Worker:
    """The users of one process, on one event loop."""

    def __init__(self, config: LoadConfig, index: int) -> None:
        self.config = config
        self.index = index
        self.stats = _Stats()
        self.results: list[MessageResult] = []
        self.timeline: list[tuple[float, int, int]] = []
        self.lags: list[float] = []
        self.stopping = False
        self.run_start = 0.0
        self.http: httpx.AsyncClient | None = None
        #: slow SSE readers' streams: a small receive buffer, as for WebSocket
        self.slow_http: httpx.AsyncClient | None = None

    def headers(self, user: int) -> dict[str, str]:
        tokens = self.config.tokens
        if not tokens:
            return {}
        return {"Authorization": f"Bearer {tokens[user % len(tokens)]}"}

    def record(self, tracker: ReplyTracker, user: int, transport: str, slow: bool) -> None:
        result = tracker.result(user=user, transport=transport, slow=slow, run_start=self.run_start)
        self.results.append(result)
        if result.outcome == "completed":
            self.stats.completed += 1
        else:
            self.stats.errors += 1
        if result.first_ms is not None:
            self.stats.recent_ttfc.append(result.first_ms)

    def connect_failed(self, exc: BaseException) -> None:
        self.stats.connect_errors += 1
        self.stats.connect_error_kinds[type(exc).__name__] += 1

    async def converse(self, rng: random.Random, message: Callable[[int], Awaitable[None]]) -> None:
        """One connected user: ``message(n)`` for n = 0, 1, ..., thinking between
        them, until the run stops or ``max_messages`` are sent."""
        self.stats.active += 1
        try:
            sent = 0
            while not self.stopping:
                await message(sent)
                sent += 1
                if self.config.max_messages and sent >= self.config.max_messages:
                    break
                await self.think(rng)
        except asyncio.CancelledError:
            pass
        finally:
            self.stats.active -= 1

    async def think(self, rng: random.Random) -> None:
        pause = self.config.think_time * rng.uniform(0.5, 1.5)
        end = time.perf_counter() + pause
        while not self.stopping:
            left = end - time.perf_counter()
            if left <= 0:
                return
            await asyncio.sleep(min(left, 0.5))

    async def run(self, report_progress: Any = None) -> dict[str, Any]:
        cfg = self.config
        mine = [u for u in range(cfg.users) if u % cfg.workers == self.index]
        pool = httpx.Limits(
            max_connections=2 * len(mine) + 16, max_keepalive_connections=2 * len(mine) + 16
        )
        self.http = httpx.AsyncClient(base_url=cfg.url, limits=pool, timeout=httpx.Timeout(30.0))
        if cfg.slow_share > 0:
            small = [(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)]
            self.slow_http = httpx.AsyncClient(
                base_url=cfg.url,
                limits=pool,
                timeout=httpx.Timeout(30.0),
                transport=httpx.AsyncHTTPTransport(limits=pool, socket_options=small),
            )
        self.run_start = time.perf_counter()
        deadline = self.run_start + cfg.duration
        monitor = asyncio.create_task(self._monitor(report_progress))
        lag = asyncio.create_task(self._measure_lag())
        tasks: list[asyncio.Task[None]] = []
        interval = cfg.workers / cfg.spawn_rate if cfg.spawn_rate > 0 else 0.0
        try:
            for n, user in enumerate(mine):
                if time.perf_counter() >= deadline:
                    break
                slow = _share(user, cfg.slow_share)
                if cfg.transport == "mix":
                    transport = "ws" if _share(user, cfg.ws_share) else "sse"
                else:
                    transport = cfg.transport
                runner = (
                    _WsUser(self, user, slow) if transport == "ws" else _SseUser(self, user, slow)
                )
                tasks.append(asyncio.create_task(runner.run()))
                if interval and n + 1 < len(mine):
                    await asyncio.sleep(
                        max(0.0, self.run_start + (n + 1) * interval - time.perf_counter())
                    )
            left = deadline - time.perf_counter()
            if left > 0:
                await asyncio.sleep(left)
            self.stopping = True
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=cfg.reply_timeout + 15.0)
                for task in pending:
                    task.cancel()
                if pending:
                    await asyncio.wait(pending, timeout=5.0)
            wall = time.perf_counter() - self.run_start
            db = await self._check_db() if cfg.check_db else None
        finally:
            self.stopping = True
            monitor.cancel()
            lag.cancel()
            await self.http.aclose()
            if self.slow_http is not None:
                await self.slow_http.aclose()
        self._snapshot()
        return {
            "results": [r.as_row() for r in self.results],
            "timeline": self.timeline,
            "lags": self.lags,
            "wall_s": wall,
            "db_check": db,
            "connect_errors": self.stats.connect_errors,
            "connect_error_kinds": dict(self.stats.connect_error_kinds),
            "drops": self.stats.drops,
            "drops_by_code": dict(self.stats.drops_by_code),
        }

    def _snapshot(self) -> None:
        t = round(time.perf_counter() - self.run_start, 1)
        self.timeline.append((t, self.stats.active, self.stats.in_flight))

    async def _monitor(self, report_progress: Any) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._snapshot()
            if report_progress is not None:
                s = self.stats
                report_progress(
                    {
                        "worker": self.index,
                        "t": time.perf_counter() - self.run_start,
                        "active": s.active,
                        "in_flight": s.in_flight,
                        "sent": s.sent,
                        "completed": s.completed,
                        "errors": s.errors,
                        "drops": s.drops,
                        "connect_errors": s.connect_errors,
                        "ttfc": s.recent_ttfc,
                    }
                )
                s.recent_ttfc = []

    async def _measure_lag(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.1)
            self.lags.append(max(0.0, time.perf_counter() - before - 0.1))

    async def _check_db(self) -> dict[str, Any]:
        """Every acknowledged message must be in the history the REST API
        serves; every completed reply must be stored complete with the text
        that was streamed."""
        assert self.http is not None
        http = self.http
        conversations: dict[str, int] = {}
        for r in self.results:
            if r.accepted_ms is not None and r.conversation_id:
                conversations.setdefault(r.conversation_id, r.user)
        stored: dict[str, dict[str, Any]] = {}
        failures: Counter[str] = Counter()
        gate = asyncio.Semaphore(16)

        async def fetch(conversation_id: str, user: int) -> None:
            before: str | None = None
            async with gate:
                for _ in range(100):  # pages of 200: bounded
                    params = {"limit": "200"}
                    if before:
                        params["before"] = before
                    try:
                        response = await http.get(
                            f"/api/v1/conversations/{conversation_id}/messages",
                            params=params,
                            headers=self.headers(user),
                        )
                    except httpx.HTTPError as exc:
                        failures[type(exc).__name__] += 1
                        return
                    if response.status_code != 200:
                        failures[f"http {response.status_code}"] += 1
                        return
                    page = orjson.loads(response.content)
                    for message in page["items"]:
                        stored[message["id"]] = message
                    before = page.get("next_before")
                    if not before:
                        return

        await asyncio.gather(*(fetch(c, u) for c, u in conversations.items()))
        acknowledged = [r for r in self.results if r.accepted_ms is not None and r.message_id]
        missing = [r.message_id for r in acknowledged if r.message_id not in stored]
        mismatched = []
        for r in self.results:
            if r.outcome != "completed" or r.generation_id is None:
                continue
            row = stored.get(r.generation_id)
            if (
                row is None
                or row.get("status") != "complete"
                or len(row.get("content") or "") != r.chars
            ):
                mismatched.append(r.generation_id)
        return {
            "acknowledged": len(acknowledged),
            "found": len(acknowledged) - len(missing),
            "missing": len(missing),
            "missing_ids": missing[:20],
            "replies_checked": sum(1 for r in self.results if r.outcome == "completed"),
            "reply_mismatches": len(mismatched),
            "reply_mismatch_ids": mismatched[:20],
            "fetch_failures": dict(failures),
        }


class _WsUser:
    def __init__(self, worker: _Worker, user: int, slow: bool) -> None:
        self.worker = worker
        self.user = user
        self.slow = slow
        self.ws: ClientConnection | None = None
        self.conversation_id: str | None = None
        self.stale: set[str] = set()
        self.rng = random.Random(worker.config.seed * 1_000_003 + user)

    async def _connect(self) -> None:
        sock = None
        if self.slow:
            sock = await _small_buffer_socket(self.worker.config.ws_url)
        self.ws = await connect(
            self.worker.config.ws_url,
            sock=sock,
            additional_headers=self.worker.headers(self.user),
            compression=None,
            max_size=4 * 2**20,
            open_timeout=30,
            ping_interval=None,  # the server pings; answering is automatic
            close_timeout=2,
            user_agent_header=None,
        )

    async def run(self) -> None:
        w = self.worker
        try:
            await self._connect()
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            w.connect_failed(exc)
            return
        try:
            await w.converse(self.rng, self._message)
        finally:
            if self.ws is not None:
                with contextlib.suppress(Exception):
                    await self.ws.close()

    async def _message(self, n: int) -> None:
        w = self.worker
        cfg = w.config
        client_id = str(uuid.uuid4())
        frame = orjson.dumps(
            message_create(
                client_id,
                f"benchmark user {self.user} message {n}: tell me about streaming",
                self.conversation_id,
                cfg.model,
            )
        ).decode()
        perf = time.perf_counter
        tracker = ReplyTracker(client_id, perf(), self.stale)
        w.stats.sent += 1
        w.stats.in_flight += 1
        loads = orjson.loads
        try:
            async with asyncio.timeout(cfg.reply_timeout):
                await self._send(frame, tracker)
                while True:
                    try:
                        if self.slow:
                            await asyncio.sleep(cfg.slow_delay)
                        assert self.ws is not None
                        raw = await self.ws.recv()
                    except ConnectionClosed as exc:
                        self._dropped(exc)
                        await self._resume(tracker, frame)
                        continue
                    if tracker.feed(loads(raw), perf()):
                        break
        except TimeoutError:
            tracker.outcome = "timeout"
        except (OSError, InvalidHandshake) as exc:
            tracker.outcome = "dropped"
            tracker.error = type(exc).__name__
        finally:
            w.stats.in_flight -= 1
        if tracker.conversation_id:
            self.conversation_id = tracker.conversation_id
        if tracker.generation_id:
            self.stale.add(tracker.generation_id)
        w.record(tracker, self.user, "ws", self.slow)

    async def _send(self, frame: str, tracker: ReplyTracker) -> None:
        assert self.ws is not None
        try:
            await self.ws.send(frame)
        except ConnectionClosed as exc:
            self._dropped(exc)
            await self._resume(tracker, frame)

    def _dropped(self, exc: ConnectionClosed) -> None:
        stats = self.worker.stats
        stats.drops += 1
        code = exc.rcvd.code if exc.rcvd is not None else "none"
        stats.drops_by_code[str(code)] += 1

    async def _resume(self, tracker: ReplyTracker, frame: str) -> None:
        """Reconnect and pick the message up where it was, as a client must."""
        for attempt in range(5):
            try:
                await self._connect()
                break
            except (OSError, InvalidHandshake, TimeoutError):
                await asyncio.sleep(0.2 * (attempt + 1))
        else:
            raise OSError("could not reconnect")
        assert self.ws is not None
        tracker.resumes += 1
        await self.ws.send(tracker.resume_frame(frame))


#: a slow reader's receive buffer: small, so that falling behind reaches the server
SLOW_RCVBUF = 4096


async def _small_buffer_socket(url: str) -> socket.socket:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (parts.hostname or "127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock


_DROPPED = {"type": "_dropped"}


class _SseUser:
    def __init__(self, worker: _Worker, user: int, slow: bool) -> None:
        self.worker = worker
        self.user = user
        self.slow = slow
        self.conversation_id: str | None = None
        self.events: asyncio.Queue[tuple[float, dict[str, Any]]] = asyncio.Queue()
        self.opened = asyncio.Event()
        self.reader: asyncio.Task[None] | None = None
        self.closing = False
        self.stale: set[str] = set()
        self.rng = random.Random(worker.config.seed * 1_000_003 + user)

    async def run(self) -> None:
        w = self.worker
        assert w.http is not None
        try:
            body = {"model": w.config.model} if w.config.model else {}
            response = await w.http.post(
                "/api/v1/conversations", content=orjson.dumps(body), headers=self._headers()
            )
            if response.status_code != 201:
                raise OSError(f"create conversation: HTTP {response.status_code}")
            self.conversation_id = orjson.loads(response.content)["id"]
            await self._open(None)
        except (OSError, httpx.HTTPError, TimeoutError) as exc:
            w.connect_failed(exc)
            self._stop_reader()
            return
        try:
            await w.converse(self.rng, self._message)
        finally:
            self._stop_reader()

    def _headers(self) -> dict[str, str]:
        return {**self.worker.headers(self.user), "Content-Type": "application/json"}

    def _stop_reader(self) -> None:
        self.closing = True
        if self.reader is not None:
            self.reader.cancel()

    async def _open(self, last_event_id: str | None) -> None:
        self.opened.clear()
        self.reader = asyncio.create_task(self._read(last_event_id))
        async with asyncio.timeout(30):
            await self.opened.wait()
        if self.reader.done():
            raise OSError("event stream refused")

    async def _read(self, last_event_id: str | None) -> None:
        w = self.worker
        assert w.http is not None
        params = {"last_event_id": last_event_id} if last_event_id else None
        http = w.slow_http if self.slow and w.slow_http is not None else w.http
        put = self.events.put_nowait
        perf = time.perf_counter
        loads = orjson.loads
        slow, delay = self.slow, w.config.slow_delay
        try:
            async with http.stream(
                "GET",
                f"/api/v1/conversations/{self.conversation_id}/events",
                params=params,
                headers=self.worker.headers(self.user),
                timeout=httpx.Timeout(30.0, read=None),
            ) as response:
                if response.status_code != 200:
                    return
                self.opened.set()
                buffer = b""
                async for chunk in response.aiter_raw():
                    if slow:
                        await asyncio.sleep(delay)
                    buffer += chunk
                    if b"\r" in buffer:
                        buffer = buffer.replace(b"\r\n", b"\n")
                    while True:
                        end = buffer.find(b"\n\n")
                        if end < 0:
                            break
                        block, buffer = buffer[:end], buffer[end + 2 :]
                        data = [
                            line[5:].lstrip(b" ")
                            for line in block.split(b"\n")
                            if line.startswith(b"data:")
                        ]
                        if data:
                            put((perf(), loads(b"\n".join(data))))
        except (httpx.HTTPError, OSError, orjson.JSONDecodeError):
            pass
        finally:
            self.opened.set()
            if not self.closing:
                put((perf(), _DROPPED))

    async def _message(self, n: int) -> None:
        w = self.worker
        cfg = w.config
        assert w.http is not None
        client_id = str(uuid.uuid4())
        body: dict[str, Any] = {
            "client_id": client_id,
            "content": f"benchmark user {self.user} message {n}: tell me about streaming",
        }
        if cfg.model:
            body["model"] = cfg.model
        perf = time.perf_counter
        tracker = ReplyTracker(client_id, perf(), self.stale)
        tracker.conversation_id = self.conversation_id
        w.stats.sent += 1
        w.stats.in_flight += 1
        try:
            async with asyncio.timeout(cfg.reply_timeout):
                await self._post(body, tracker)
                while tracker.outcome != "error":
                    at, event = await self.events.get()
                    if event is _DROPPED:
                        w.stats.drops += 1
                        w.stats.drops_by_code["sse"] += 1
                        await self._reopen(tracker)
                        continue
                    if tracker.feed(event, at):
                        break
        except TimeoutError:
            tracker.outcome = "timeout"
        except (OSError, httpx.HTTPError) as exc:
            tracker.outcome = "dropped"
            tracker.error = type(exc).__name__
        finally:
            w.stats.in_flight -= 1
        if tracker.generation_id:
            self.stale.add(tracker.generation_id)
        w.record(tracker, self.user, "sse", self.slow)

    async def _post(self, body: dict[str, Any], tracker: ReplyTracker) -> None:
        w = self.worker
        assert w.http is not None
        payload = orjson.dumps(body)
        for attempt in range(3):
            try:
                response = await w.http.post(
                    f"/api/v1/conversations/{self.conversation_id}/messages",
                    content=payload,
                    headers=self._headers(),
                )
                break
            except httpx.TransportError:
                if attempt == 2:
                    raise
                await asyncio.sleep(0.2)  # the same client_id is idempotent
        now = time.perf_counter()
        if response.status_code != 202:
            tracker.done_at = now
            tracker.outcome = "error"
            try:
                tracker.error = orjson.loads(response.content)["error"]["code"]
            except Exception:
                tracker.error = f"http {response.status_code}"
            return
        answer = orjson.loads(response.content)
        tracker.accepted(answer["message"], answer.get("generation_id"), now)

    async def _reopen(self, tracker: ReplyTracker) -> None:
        last = tracker.last_event_id()
        for attempt in range(5):
            try:
                await self._open(last)
                tracker.resumes += 1
                return
            except (OSError, httpx.HTTPError, TimeoutError):
                await asyncio.sleep(0.2 * (attempt + 1))
        raise OSError("could not reopen the event stream")


# --------------------------------------------------------------------------- processes


def _event_loop_runner() -> Any:
    try:
        import uvloop

        return uvloop.run
    except ImportError:  # pragma: no cover
        return asyncio.run


def _worker_process(config: LoadConfig, index: int, progress: Any, results: Any) -> None:
    def report_progress(snapshot: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):
            progress.put_nowait(snapshot)

    try:
        outcome = _event_loop_runner()(_Worker(config, index).run(report_progress))
        results.put((index, outcome, None))
    except BaseException as exc:  # report, never hang the parent
        results.put((index, None, f"{type(exc).__name__}: {exc}"))


class _Progress:
    """The one-line status the parent prints while the run goes on."""

    def __init__(self, config: LoadConfig) -> None:
        self.config = config
        self.latest: dict[int, dict[str, Any]] = {}
        self.window: deque[tuple[float, float]] = deque()
        self.last_print = 0.0
        self.tty = sys.stderr.isatty()

    def update(self, snapshot: dict[str, Any]) -> None:
        self.latest[snapshot["worker"]] = snapshot
        now = time.monotonic()
        for value in snapshot.get("ttfc", ()):
            self.window.append((now, value))
        while self.window and self.window[0][0] < now - 10.0:
            self.window.popleft()

    def show(self, final: bool = False) -> None:
        if not self.config.progress or not self.latest:
            return
        now = time.monotonic()
        if not final and now - self.last_print < (1.0 if self.tty else 10.0):
            return
        self.last_print = now
        total = {
            key: sum(s[key] for s in self.latest.values())
            for key in (
                "active",
                "in_flight",
                "sent",
                "completed",
                "errors",
                "drops",
                "connect_errors",
            )
        }
        t = max(s["t"] for s in self.latest.values())
        ttfc = sorted(v for _, v in self.window)
        p50 = report.percentile(ttfc, 50)
        p99 = report.percentile(ttfc, 99)
        line = (
            f"[{self.config.label} {t:5.0f}s] users {total['active']}/{self.config.users} "
            f"in-flight {total['in_flight']} sent {total['sent']} done {total['completed']} "
            f"failed {total['errors']} drops {total['drops']} conn-err {total['connect_errors']} "
            f"TTFC(10s) p50 {p50 or 0:.0f} ms p99 {p99 or 0:.0f} ms"
        )
        if self.tty:
            print("\r" + line.ljust(150), end="\n" if final else "", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)


def run_load(config: LoadConfig) -> dict[str, Any]:
    """Run the load and return the full result (see :func:`write_outputs`)."""
    started = datetime.now(UTC).isoformat(timespec="seconds")
    config.workers = max(1, min(config.workers, config.users or 1))
    progress = _Progress(config)
    outcomes: list[dict[str, Any]] = []
    if config.workers == 1:

        def local(snapshot: dict[str, Any]) -> None:
            progress.update(snapshot)
            progress.show()

        outcomes.append(_event_loop_runner()(_Worker(config, 0).run(local)))
    else:
        ctx = multiprocessing.get_context("spawn")
        progress_queue = ctx.Queue()
        result_queue = ctx.Queue()
        processes = [
            ctx.Process(
                target=_worker_process,
                args=(config, i, progress_queue, result_queue),
                daemon=True,
            )
            for i in range(config.workers)
        ]
        for process in processes:
            process.start()
        errors: list[str] = []
        deadline = time.monotonic() + config.duration + config.reply_timeout + 120.0
        while len(outcomes) + len(errors) < len(processes) and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                while True:
                    progress.update(progress_queue.get_nowait())
            progress.show()
            try:
                _, outcome, error = result_queue.get(timeout=0.5)
            except queue.Empty:
                if not any(p.is_alive() for p in processes) and result_queue.empty():
                    errors.append("a worker process died without a result")
                continue
            if error:
                errors.append(error)
            else:
                outcomes.append(outcome)
        for process in processes:
            process.join(5)
            if process.is_alive():
                process.kill()
        if errors:
            raise RuntimeError("load generator workers failed: " + "; ".join(errors))
    progress.show(final=True)
    return _merge(config, outcomes, started)


def _merge(config: LoadConfig, outcomes: list[dict[str, Any]], started: str) -> dict[str, Any]:
    fields = MessageResult.fields()
    rows = [dict(zip(fields, row, strict=True)) for o in outcomes for row in o["results"]]
    rows.sort(key=lambda r: r["sent_at"])
    wall = max(o["wall_s"] for o in outcomes)
    timeline: dict[int, list[int]] = {}
    for o in outcomes:
        for t, active, in_flight in o["timeline"]:
            slot = timeline.setdefault(round(t), [0, 0])
            slot[0] += active
            slot[1] += in_flight
    lags = sorted(lag * 1000.0 for o in outcomes for lag in o["lags"])
    db_checks = [o["db_check"] for o in outcomes if o["db_check"] is not None]
    db: dict[str, Any] | None = None
    if db_checks:
        db = {}
        for check in db_checks:
            for key, value in check.items():
                if isinstance(value, int):
                    db[key] = db.get(key, 0) + value
                elif isinstance(value, list):
                    db[key] = (db.get(key) or []) + value
                elif isinstance(value, dict):
                    merged = db.setdefault(key, {})
                    for k, v in value.items():
                        merged[k] = merged.get(k, 0) + v
    drops_by_code: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    for o in outcomes:
        drops_by_code.update(o["drops_by_code"])
        kinds.update(o["connect_error_kinds"])
    measured = [r for r in rows if r["sent_at"] >= config.warmup] or rows
    summary = report.summarize(
        measured,
        wall_s=max(wall - config.warmup, 1e-9) if measured is not rows else wall,
        upstream_ttft_ms=config.upstream_ttft_ms,
        upstream_stream_ms=config.upstream_stream_ms,
    )
    if measured is not rows:
        # text and connections are checked over the whole run, warm-up included
        everything = report.summarize(rows, wall_s=wall)
        summary["loss"] = everything["loss"]
        summary["resumes"] = everything["resumes"]
        summary["whole_run"] = {
            key: everything[key] for key in ("messages", "completed", "outcomes", "errors")
        }
    public_config = dataclasses.asdict(config)
    public_config["tokens"] = len(config.tokens)  # never write the secrets out
    return {
        "label": config.label,
        "started_at": started,
        "wall_s": round(wall, 2),
        "config": public_config,
        "summary": summary,
        "connections": {
            "connect_errors": sum(o["connect_errors"] for o in outcomes),
            "connect_error_kinds": dict(kinds),
            "drops": sum(o["drops"] for o in outcomes),
            "drops_by_code": dict(drops_by_code),
        },
        "db_check": db,
        "generator": {
            "workers": config.workers,
            "loop_lag_ms_p99": round(report.percentile(lags, 99) or 0.0, 1),
            "loop_lag_ms_max": round(lags[-1], 1) if lags else 0.0,
        },
        "timeline": [[t, a, f] for t, (a, f) in sorted(timeline.items())],
        "rows": rows,
    }


def write_outputs(
    result: dict[str, Any], out: Path, *, plots: bool = True, raw: bool = True
) -> dict[str, Path]:
    """``{label}.json``, ``{label}.md`` and (with ``plots``) two PNGs in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    label = result["label"]
    paths = {"json": out / f"{label}.json", "md": out / f"{label}.md"}
    data = result if raw else {k: v for k, v in result.items() if k != "rows"}
    paths["json"].write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    paths["md"].write_text(report.markdown(result))
    if plots and result["rows"]:
        paths["latency"] = report.plot_latency(
            {label: result["rows"]}, out / f"{label}-latency.png", title=f"{label}: latency"
        )
        paths["ttfc"] = report.plot_ttfc_timeline(
            {label: (result["rows"], result["timeline"])},
            out / f"{label}-ttfc.png",
            title=f"{label}: time to first chunk over the run",
        )
    return paths


# --------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> LoadConfig:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.load", description=__doc__.splitlines()[0]
    )
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the server's base URL")
    p.add_argument("--users", type=int, default=10)
    p.add_argument("--spawn-rate", type=float, default=20.0, help="users connected per second")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of new messages")
    p.add_argument("--think-time", type=float, default=5.0, help="mean seconds between messages")
    p.add_argument("--transport", choices=("ws", "sse", "mix"), default="ws")
    p.add_argument("--ws-share", type=float, default=0.5, help="with --transport mix")
    p.add_argument("--model", default=None, help="the model to ask (default: the server's)")
    p.add_argument("--token", action="append", default=[], help="a bearer token (repeatable)")
    p.add_argument("--tokens-file", default=None, help="bearer tokens, one per line")
    p.add_argument("--label", default="sanic-chat", help="names the output files")
    p.add_argument("--out", default=None, help="output directory (default: no files)")
    p.add_argument("--workers", type=int, default=1, help="generator processes")
    p.add_argument("--reply-timeout", type=float, default=60.0)
    p.add_argument("--max-messages", type=int, default=0, help="per user (0: no limit)")
    p.add_argument("--slow-share", type=float, default=0.0, help="share of slow readers")
    p.add_argument("--slow-delay", type=float, default=0.05, help="a slow reader's pause per read")
    p.add_argument("--no-db-check", action="store_true", help="skip the history check")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-raw", action="store_true", help="leave per-message rows out of the JSON")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--upstream-ttft-ms", type=float, default=None, help="to report overheads")
    p.add_argument("--upstream-stream-ms", type=float, default=None, help="to report overheads")
    p.add_argument(
        "--warmup", type=float, default=0.0, help="seconds of ramp-up left out of the latencies"
    )
    a = p.parse_args(argv)
    tokens = list(a.token)
    if a.tokens_file:
        tokens += [
            line.strip() for line in Path(a.tokens_file).read_text().splitlines() if line.strip()
        ]
    return LoadConfig(
        url=a.url,
        users=a.users,
        spawn_rate=a.spawn_rate,
        duration=a.duration,
        think_time=a.think_time,
        transport=a.transport,
        ws_share=a.ws_share,
        model=a.model,
        tokens=tokens,
        label=a.label,
        out=a.out,
        workers=a.workers,
        reply_timeout=a.reply_timeout,
        max_messages=a.max_messages,
        slow_share=a.slow_share,
        slow_delay=a.slow_delay,
        check_db=not a.no_db_check,
        plots=not a.no_plots,
        raw=not a.no_raw,
        progress=not a.quiet,
        seed=a.seed,
        upstream_ttft_ms=a.upstream_ttft_ms,
        upstream_stream_ms=a.upstream_stream_ms,
        warmup=a.warmup,
    )


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    result = run_load(config)
    if config.out:
        paths = write_outputs(result, Path(config.out), plots=config.plots, raw=config.raw)
        print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    print(report.markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
