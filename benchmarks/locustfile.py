"""sanic-chat users for Locust (the ``bench`` extra), measuring what
``benchmarks.load`` measures and reporting it as Locust request events.

    locust -f benchmarks/locustfile.py --host http://127.0.0.1:8000 \\
        --users 100 --spawn-rate 10 --run-time 60s --headless
    locust -f benchmarks/locustfile.py ChatWebSocketUser ...   # one transport only

Each user keeps one conversation and, per task, sends a message and reads the
reply to its terminal event. Events appear in Locust's table by transport:
``persist`` (send to ``message.accepted``: the commit), ``first chunk`` (TTFC),
``full reply``; failures named ``lost text`` (offset gaps, overlaps, or a
final content that differs from what was streamed), ``dropped connection``
and the server's error codes. Environment: ``BENCH_TOKENS_FILE`` (bearer
tokens, one per line, one per user in turn), ``BENCH_MODEL``,
``BENCH_THINK_TIME`` (mean seconds, default 5), ``BENCH_REPLY_TIMEOUT`` (60).

The asyncio generator (``benchmarks.load``) is leaner and is what
``benchmarks.run`` uses; this file is for teams that already run Locust.
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
from pathlib import Path
from typing import Any

import gevent
import orjson
import requests
from gevent.queue import Empty, Queue
from locust import HttpUser, User, between, task
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from benchmarks.frames import ReplyTracker, message_create

THINK = float(os.environ.get("BENCH_THINK_TIME", "5"))
REPLY_TIMEOUT = float(os.environ.get("BENCH_REPLY_TIMEOUT", "60"))
MODEL = os.environ.get("BENCH_MODEL") or None
_TOKENS = (
    [t.strip() for t in Path(os.environ["BENCH_TOKENS_FILE"]).read_text().splitlines() if t.strip()]
    if os.environ.get("BENCH_TOKENS_FILE")
    else []
)
_numbers = itertools.count()


def _auth(index: int) -> dict[str, str]:
    return {"Authorization": f"Bearer {_TOKENS[index % len(_TOKENS)]}"} if _TOKENS else {}


def _content(index: int) -> str:
    return f"locust user {index}: tell me about streaming"


class LostText(Exception):
    """Text arrived with a gap, twice, or differs from the stored reply."""


class Dropped(Exception):
    """The connection went away mid-reply (the user resumed by offset)."""


class ServerError(Exception):
    """An ``error`` frame, a failed generation, or an HTTP error."""


def _report_drop(user: User, transport: str, reason: str) -> None:
    """A connection that went away mid-reply, as a failed request in Locust's table."""
    user.environment.events.request.fire(
        request_type=transport,
        name="dropped connection",
        response_time=0.0,
        response_length=0,
        exception=Dropped(reason),
        context={},
    )


def _report(user: User, transport: str, tracker: ReplyTracker) -> None:
    fire = user.environment.events.request.fire
    sent = tracker.sent_at

    def ms(at: float | None) -> float | None:
        return None if at is None else (at - sent) * 1000.0

    for name, value in (
        ("persist", ms(tracker.accepted_at)),
        ("first chunk", ms(tracker.first_at)),
    ):
        if value is not None:
            fire(
                request_type=transport,
                name=name,
                response_time=value,
                response_length=0,
                exception=None,
                context={},
            )
    done = ms(tracker.done_at)
    if tracker.outcome == "completed" and done is not None:
        fire(
            request_type=transport,
            name="full reply",
            response_time=done,
            response_length=tracker.length,
            exception=None,
            context={},
        )
    elif tracker.outcome == "timeout":
        fire(
            request_type=transport,
            name="full reply",
            response_time=REPLY_TIMEOUT * 1000,
            response_length=tracker.length,
            exception=TimeoutError("no terminal event"),
            context={},
        )
    else:
        fire(
            request_type=transport,
            name=f"reply {tracker.outcome}",
            response_time=done or 0.0,
            response_length=tracker.length,
            exception=ServerError(tracker.error or tracker.outcome),
            context={},
        )
    if tracker.gaps or tracker.overlaps or tracker.mismatch:
        problem = LostText(
            f"gaps {tracker.gaps}, overlaps {tracker.overlaps}, mismatch {tracker.mismatch}"
        )
        fire(
            request_type=transport,
            name="lost text",
            response_time=0.0,
            response_length=0,
            exception=problem,
            context={},
        )


class ChatWebSocketUser(User):
    """One WebSocket, one conversation; resumes by offset after a drop."""

    wait_time = between(THINK * 0.5, THINK * 1.5)

    def on_start(self) -> None:
        self.index = next(_numbers)
        self.conversation_id: str | None = None
        self.stale: set[str] = set()
        self.ws: ClientConnection = self._connect()

    def _connect(self) -> ClientConnection:
        assert self.host, "give --host http://127.0.0.1:8000"
        url = "ws" + self.host.rstrip("/").removeprefix("http") + "/ws"
        return connect(url, additional_headers=_auth(self.index), compression=None, open_timeout=30)

    def on_stop(self) -> None:
        self.ws.close()

    @task
    def chat(self) -> None:
        client_id = str(uuid.uuid4())
        frame = orjson.dumps(
            message_create(client_id, _content(self.index), self.conversation_id, MODEL)
        ).decode()
        tracker = ReplyTracker(client_id, time.perf_counter(), self.stale)
        deadline = tracker.sent_at + REPLY_TIMEOUT
        self.ws.send(frame)
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            try:
                raw = self.ws.recv(timeout=left)
            except TimeoutError:
                break
            except ConnectionClosed as exc:
                _report_drop(self, "WS", str(exc))
                self.ws = self._connect()
                tracker.resumes += 1
                self.ws.send(tracker.resume_frame(frame))
                continue
            if tracker.feed(orjson.loads(raw), time.perf_counter()):
                break
        self.conversation_id = tracker.conversation_id or self.conversation_id
        if tracker.generation_id:
            self.stale.add(tracker.generation_id)
        _report(self, "WS", tracker)


_DROPPED: dict[str, Any] = {"type": "_dropped"}


class ChatSseUser(HttpUser):
    """POSTs messages and reads the conversation's event stream (SSE)."""

    wait_time = between(THINK * 0.5, THINK * 1.5)

    def on_start(self) -> None:
        self.index = next(_numbers)
        self.stale: set[str] = set()
        self.events: Queue[tuple[float, dict[str, Any]]] = Queue()
        self.closing = False
        response = self.client.post(
            "/api/v1/conversations",
            data=orjson.dumps({"model": MODEL} if MODEL else {}),
            headers={**_auth(self.index), "Content-Type": "application/json"},
            name="create conversation",
        )
        response.raise_for_status()
        self.conversation_id = response.json()["id"]
        self.reader = gevent.spawn(self._read, None)

    def on_stop(self) -> None:
        self.closing = True
        self.reader.kill(block=False)

    def _read(self, last_event_id: str | None) -> None:
        """The event stream, outside Locust's statistics, into ``self.events``."""
        assert self.host, "give --host http://127.0.0.1:8000"
        url = f"{self.host.rstrip('/')}/api/v1/conversations/{self.conversation_id}/events"
        params = {"last_event_id": last_event_id} if last_event_id else None
        data: list[bytes] = []
        try:
            with requests.get(
                url, params=params, headers=_auth(self.index), stream=True, timeout=(30, None)
            ) as response:
                # chunk_size None: lines as they arrive, not once 512 bytes are in
                for line in response.iter_lines(chunk_size=None):  # type: ignore[call-overload]
                    if line.startswith(b"data:"):
                        data.append(line[5:].lstrip(b" "))
                    elif not line and data:
                        self.events.put((time.perf_counter(), orjson.loads(b"\n".join(data))))
                        data = []
        except (requests.RequestException, OSError, orjson.JSONDecodeError):
            pass
        if not self.closing:
            self.events.put((time.perf_counter(), _DROPPED))

    @task
    def chat(self) -> None:
        client_id = str(uuid.uuid4())
        body: dict[str, Any] = {"client_id": client_id, "content": _content(self.index)}
        if MODEL:
            body["model"] = MODEL
        tracker = ReplyTracker(client_id, time.perf_counter(), self.stale)
        with self.client.post(
            f"/api/v1/conversations/{self.conversation_id}/messages",
            data=orjson.dumps(body),
            headers={**_auth(self.index), "Content-Type": "application/json"},
            name="post message",
            catch_response=True,
        ) as response:
            if response.status_code != 202:
                response.failure(f"HTTP {response.status_code}")
                return
            answer = response.json()
        tracker.accepted(answer["message"], answer.get("generation_id"), time.perf_counter())
        deadline = tracker.sent_at + REPLY_TIMEOUT
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            try:
                at, event = self.events.get(timeout=left)
            except Empty:
                break
            if event is _DROPPED:
                _report_drop(self, "SSE", "event stream ended")
                tracker.resumes += 1
                self.reader = gevent.spawn(self._read, tracker.last_event_id())
                continue
            if tracker.feed(event, at):
                break
        if tracker.generation_id:
            self.stale.add(tracker.generation_id)
        _report(self, "SSE", tracker)
