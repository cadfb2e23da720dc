"""Thousands of random and hostile frames at /ws while another user chats.

The server must answer every frame that reaches the decoder with exactly one
direct answer (``error``, ``pong`` or ``message.accepted``), never with
``internal``; close the socket only for what the protocol says (1009 over the
frame limit, 1007 for a text frame that is not UTF-8); keep /healthz and
/readyz green; finish the other user's replies; log no traceback; and store
exactly what it accepted.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tests.server import RunningServer

from .support import (
    CLIENT_FRAME_TYPES,
    TERMINAL,
    bearer,
    create,
    history,
    new_user,
    recv,
    request,
    send,
    serve_jwt,
    whole_history,
    ws_connect,
)

SEED = 20_251_126
FRAME_LIMIT = 2 * 1024 * 1024
HOSTILE_FRAMES = 6_000
DIRECT = {"error", "pong", "message.accepted"}

ODD = [
    "\u202e",
    "\u200f",
    "\u200e",
    "\u2066",
    "\ufeff",
    "\u200b",
    "\u0301" * 50,
    "\uffff",
    "\U0010ffff",
    "\U0001f600",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467",
    "\x01",
    "\x1b[31m",
    "\r\n",
    "\t",
    "Z\u0351\u0352\u0353",
    "ﷺ",
    "𒐫",
    "\u0000",
]
ESCAPED_SURROGATES = [
    "\\ud800",
    "\\udfff",
    "\\ud83d",
    "\\ude00\\ud83d",
    "\\ud83d\\ude00",
    "\\u0000",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from serve_jwt(
        tmp_path_factory,
        "fuzz",
        SANIC_CHAT_MAX_FRAME_BYTES=str(FRAME_LIMIT),
        SANIC_CHAT_RATE_LIMIT="600/minute",
    )


class Hostile:
    """Frame maker; ``victim_ids`` are another user's real ids."""

    def __init__(self, rng: random.Random, victim_ids: list[str]) -> None:
        self.rng = rng
        self.victim_ids = victim_ids
        #: client_id -> content of every create that may be accepted
        self.creates: dict[str, str] = {}

    def odd_text(self, size: int = 12) -> str:
        rng = self.rng
        parts = []
        for _ in range(size):
            pick = rng.random()
            if pick < 0.4:
                parts.append(rng.choice(ODD))
            elif pick < 0.7:
                parts.append(chr(rng.randrange(0x20, 0x2FFFF)))
            else:
                parts.append(chr(rng.randrange(0x20, 0x7F)))
        text = "".join(parts)
        return "".join(c for c in text if not 0xD800 <= ord(c) <= 0xDFFF)

    def value(self, depth: int = 0) -> Any:
        """A random JSON value: scalars of every edge, and nested ones."""
        rng = self.rng
        scalars: list[Any] = [None, True, False, 0, -1, 2**53 + 1, 2**63, -(2**63) - 1, 1.5, 1e308]
        pick = rng.randrange(len(scalars) + (4 if depth < 3 else 2))
        if pick < len(scalars):
            return scalars[pick]
        pick -= len(scalars)
        if pick == 0:
            return self.odd_text(rng.randrange(0, 20))
        if pick == 1:
            return str(uuid.uuid4())
        if pick == 2:
            return [self.value(depth + 1) for _ in range(rng.randrange(4))]
        return {self.odd_text(3): self.value(depth + 1) for _ in range(rng.randrange(4))}

    def frame(self) -> tuple[str | bytes, str]:
        """One hostile frame and its kind."""
        rng = self.rng
        kind = rng.choices(
            [
                "bytes",
                "text",
                "structure",
                "numbers",
                "types",
                "surrogates",
                "huge",
                "unknown_ids",
                "victim_ids",
                "valid_create",
                "ping",
            ],
            weights=[10, 10, 10, 8, 20, 8, 0.4, 10, 8, 3, 3],
        )[0]
        raw = getattr(self, f"_{kind}")()
        self._remember(raw)
        return raw, kind

    def _remember(self, raw: str | bytes) -> None:
        """Note the content of anything that might be accepted as a message."""
        try:
            frame = json.loads(raw)
            client_id = str(uuid.UUID(frame["client_id"]))
        except Exception:
            return
        if isinstance(frame.get("content"), str):
            self.creates[client_id] = frame["content"]

    def _bytes(self) -> bytes:
        return self.rng.randbytes(self.rng.randrange(0, 300))

    def _text(self) -> str:
        return self.odd_text(self.rng.randrange(0, 60))

    def _structure(self) -> str:
        rng = self.rng
        depth = rng.choice([10, 1000, 1025, 5000, 100_000])
        return rng.choice(
            [
                "[" * depth + "]" * depth,
                '{"a":' * depth + "1" + "}" * depth,
                '{"type":"ping"' + "," * rng.randrange(1, 3) + "}",
                '{"type": "ping"} {"type": "ping"}',
                '\ufeff{"type": "ping"}',
                '{"type": "ping",}',
                "{'type': 'ping'}",
                '{"type": NaN}',
                '{"type": "ping" /* c */}',
                "",
                "   ",
                "null",
                '"ping"',
                "[]",
                '{"type": "ping", "type": "message.create"}',
                '{"type": "message.create", "type": "ping"}',
                '{"type": "ping"' * 3,
            ]
        )

    def _numbers(self) -> str:
        rng = self.rng
        number = rng.choice(
            [
                "1" + "0" * 400,
                "-1",
                "1e400",
                "-1e400",
                "1.5",
                "-0",
                "9007199254740993",
                "18446744073709551616",
                "1e-400",
                "0x10",
                "Infinity",
                "00",
                "1" * 5000,
            ]
        )
        return f'{{"type": "generation.resume", "generation_id": "{uuid.uuid4()}", "offset": {number}}}'

    def _types(self) -> bytes:
        rng = self.rng
        frame: dict[str, Any] = {"type": rng.choice(CLIENT_FRAME_TYPES)}
        for field in (
            "client_id",
            "content",
            "conversation_id",
            "generation_id",
            "offset",
            "model",
        ):
            if rng.random() < 0.6:
                frame[field] = self.value()
        if rng.random() < 0.3:
            frame["type"] = self.value()
        return json.dumps(frame, ensure_ascii=rng.random() < 0.5).encode()

    def _surrogates(self) -> str:
        rng = self.rng
        escaped = rng.choice(ESCAPED_SURROGATES)
        field = rng.choice(["content", "type", "client_id", "model"])
        frame = {"type": "message.create", "client_id": str(uuid.uuid4()), "content": "x"}
        text = json.dumps(frame)
        return text.replace(f'"{field}": "', f'"{field}": "{escaped}', 1)

    def _huge(self) -> str:
        """About 1 MB of UTF-8, inside the frame limit: the decoder must see it."""
        rng = self.rng
        char = rng.choice(["é", "a", "\u202e", "\U0001f600"])
        mega = char * (1024 * 1024 // len(char.encode()))
        return rng.choice(
            [
                json.dumps(
                    {"type": "message.create", "client_id": str(uuid.uuid4()), "content": mega},
                    ensure_ascii=False,
                ),
                json.dumps({"type": mega}, ensure_ascii=False),
                json.dumps(
                    {"type": "generation.cancel", "generation_id": mega}, ensure_ascii=False
                ),
                mega,
            ]
        )

    def _unknown_ids(self) -> str:
        rng = self.rng
        some = str(uuid.uuid4())
        return json.dumps(
            rng.choice(
                [
                    {"type": "conversation.subscribe", "conversation_id": some},
                    {
                        "type": "conversation.subscribe",
                        "conversation_id": some,
                        "generation_id": some,
                        "offset": 3,
                    },
                    {
                        "type": "generation.resume",
                        "generation_id": some,
                        "offset": rng.randrange(10**6),
                    },
                    {"type": "generation.cancel", "generation_id": some},
                    {**create("into the void"), "conversation_id": some},
                ]
            )
        )

    def _victim_ids(self) -> str:
        rng = self.rng
        theirs = rng.choice(self.victim_ids)
        return json.dumps(
            rng.choice(
                [
                    {"type": "conversation.subscribe", "conversation_id": theirs},
                    {"type": "generation.resume", "generation_id": theirs, "offset": 0},
                    {"type": "generation.cancel", "generation_id": theirs},
                    {**create("hijack"), "conversation_id": theirs},
                ]
            )
        )

    def _valid_create(self) -> str:
        content = "fuzz " + self.odd_text(self.rng.randrange(1, 40))
        frame = create(content)
        return json.dumps(frame, ensure_ascii=self.rng.random() < 0.5)

    def _ping(self) -> str:
        return json.dumps({"type": "ping", "extra": self.value()})


class Victim:
    """The other user: chats on while the fuzz runs; every reply must complete."""

    def __init__(self, server: RunningServer) -> None:
        self.server = server
        self.user = new_user()
        self.conversation_id = ""
        self.sent: list[str] = []
        self.replies: dict[str, str] = {}
        self.ids: list[str] = []
        self.ready = asyncio.Event()
        self.stop = asyncio.Event()

    async def run(self) -> None:
        async with ws_connect(self.server, bearer(self.user)) as ws:
            await self._chat(ws, "victim's first message")
            self.ready.set()
            n = 1
            while not self.stop.is_set() or n < 3:
                n += 1
                await asyncio.sleep(0.2)
                await self._chat(ws, f"victim's message {n}", conversation_id=self.conversation_id)

    async def _chat(self, ws: ClientConnection, content: str, **extra: Any) -> None:
        frame = create(content, **extra)
        await send(ws, **frame)
        self.sent.append(content)
        text = ""
        while True:
            event = await recv(ws, timeout=30)
            if event["type"] == "message.accepted":
                self.conversation_id = event["conversation_id"]
                self.ids += [event["conversation_id"], event["message"]["id"]]
            elif event["type"] == "generation.delta":
                assert event["offset"] == len(text)
                text += event["text"]
            elif event["type"] in TERMINAL:
                assert event["type"] == "generation.completed", event
                assert event["message"]["content"] == text
                self.replies[event["generation_id"]] = text
                self.ids.append(event["generation_id"])
                return
            elif event["type"] == "error":
                raise AssertionError(f"the victim got an error: {event}")


async def _fuzz_connection(
    server: RunningServer, user: str, frames: list[str | bytes]
) -> tuple[int, list[dict[str, Any]]]:
    """Send ``frames`` then a ping; (direct answers, every frame received)."""
    received: list[dict[str, Any]] = []
    async with ws_connect(server, bearer(user)) as ws:
        done = asyncio.Event()

        async def reader() -> None:
            while True:
                frame = await recv(ws, timeout=60)
                received.append(frame)
                if frame["type"] == "pong" and frame.get("marker", True) and done.is_set():
                    return

        reading = asyncio.create_task(reader())
        for raw in frames:
            await ws.send(raw)
        done.set()
        await ws.send('{"type": "ping"}')
        # the reader stops at the first pong after the last frame; pongs of
        # fuzzed pings may come first, so keep reading until the counts agree
        await asyncio.wait_for(reading, 120)
        while sum(f["type"] in DIRECT for f in received) < len(frames) + 1:
            received.append(await recv(ws, timeout=30))
    return sum(f["type"] in DIRECT for f in received), received


async def _closed_with(server: RunningServer, user: str, raw: bytes | str, *, text: bool) -> int:
    async with ws_connect(server, bearer(user)) as ws:
        # the server may close while a huge frame is still being sent: then
        # the send itself reports the close
        with pytest.raises(ConnectionClosed) as closed:
            await ws.send(raw, text=text)
            while True:
                await recv(ws, timeout=30)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


async def test_hostile_frames_never_hurt_the_server_or_another_user(server: RunningServer) -> None:
    rng = random.Random(SEED)
    victim = Victim(server)
    victim_task = asyncio.create_task(victim.run())
    await asyncio.wait_for(victim.ready.wait(), 30)
    attacker = new_user()
    hostile = Hostile(rng, list(victim.ids))
    batches: list[list[str | bytes]] = [[] for _ in range(6)]
    kinds: dict[str, int] = {}
    for i in range(HOSTILE_FRAMES):
        raw, kind = hostile.frame()
        kinds[kind] = kinds.get(kind, 0) + 1
        batches[i % len(batches)].append(raw)

    health = []
    results = []
    for batch in batches:  # one connection at a time, the victim chatting throughout
        results.append(await _fuzz_connection(server, attacker, batch))
        health.append((await request("GET", f"{server.base_url}/healthz")).status_code)

    # frames that end the connection, each on its own socket
    codes = [
        await _closed_with(server, attacker, b"x" * (FRAME_LIMIT + 1), text=False),
        await _closed_with(server, attacker, "y" * (FRAME_LIMIT + 1), text=True),
        await _closed_with(server, attacker, b'{"type": "ping", "x": "\xff\xfe"}', text=True),
        await _closed_with(
            server, attacker, b'{"type": "\xed\xa0\x80"}', text=True
        ),  # UTF-8 surrogate
    ]
    victim.stop.set()
    await asyncio.wait_for(victim_task, 60)

    # every frame got exactly one direct answer, none of them "internal"
    for (answers, received), batch in zip(results, batches, strict=True):
        assert answers == len(batch) + 1
        codes_seen = {f["code"] for f in received if f["type"] == "error"}
        assert "internal" not in codes_seen, codes_seen
    assert codes == [1009, 1009, 1007, 1007]
    assert health == [200] * len(batches)
    assert (await request("GET", f"{server.base_url}/readyz")).status_code == 200
    assert sum(kinds.values()) >= 5_000

    # nothing of the victim's reached the attacker
    everything = json.dumps([f for _, received in results for f in received])
    for victim_id in victim.ids:
        assert everything.count(victim_id) == everything.count(f'"ref": "{victim_id}"')

    # what was stored is exactly what was sent
    accepted = {
        f["client_id"]: f
        for _, received in results
        for f in received
        if f["type"] == "message.accepted"
    }
    assert accepted, "no hostile-but-valid create was accepted: the test lost its teeth"
    for client_id, frame in accepted.items():
        assert frame["message"]["content"] == hostile.creates[client_id]
        items = await history(server, attacker, frame["conversation_id"])
        assert items[0]["content"] == hostile.creates[client_id]
    # the victim chats for as long as the attack lasts: every page of it
    items = await whole_history(server, victim.user, victim.conversation_id)
    assert [m["content"] for m in items if m["role"] == "user"] == victim.sent
    assert {m["id"]: m["content"] for m in items if m["role"] == "assistant"} == victim.replies
    assert {m["status"] for m in items} == {"complete"}

    log = server.log()
    for sign in ("Traceback", "Exception occurred", "frame handling failed", "unhandled error"):
        assert sign not in log, log[-3000:]
