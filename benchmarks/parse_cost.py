"""Per-chunk parsing cost of each provider client, in microseconds.

10,000 pre-recorded token frames per format (written by the fake LLM's own
frame builders, so byte-identical to what it streams) are fed through the real
provider client over ``httpx.MockTransport``: HTTP response handling, SSE or
NDJSON framing, JSON decoding and Chunk building, everything but the socket.
Two deliveries: one network read per frame (what a paced stream looks like)
and 64 KiB reads (a burst). The pure decoder (frame in, chunk out) is timed
too, to show where the time goes.

    python benchmarks/parse_cost.py [--chunks 10000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Callable

import httpx

from sanic_chat.core.ports import CompletionRequest, Turn
from sanic_chat.providers.anthropic import AnthropicStreamDecoder
from sanic_chat.providers.catalog import ModelCatalog
from sanic_chat.providers.ollama import OllamaStreamDecoder
from sanic_chat.providers.openai import OpenAIStreamDecoder
from sanic_chat.providers.spec import ModelSpec
from sanic_chat.testing.fake_llm import reply_tokens
from sanic_chat.testing.fake_llm.formats import FORMATS, Reply

VENDORS = ("openai", "anthropic", "ollama")


def recorded(vendor: str, count: int) -> list[bytes]:
    """The frames of one reply of ``count`` tokens: head, tokens, tail."""
    reply = Reply(
        model="bench",
        tokens=reply_tokens("benchmark the parsers", count),
        input_tokens=3,
        truncated=False,
        include_usage=True,
    )
    fmt = FORMATS[vendor](reply)
    frames = [fmt.head()] if fmt.head() else []
    frames += [fmt.token(token) for token in reply.tokens]
    frames.append(fmt.tail())
    return frames


class Replay(httpx.AsyncByteStream):
    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece


def in_reads(frames: list[bytes], size: int | None) -> list[bytes]:
    if size is None:
        return frames
    body = b"".join(frames)
    return [body[i : i + size] for i in range(0, len(body), size)]


async def client_cost(
    vendor: str, frames: list[bytes], read_size: int | None, chunks: int
) -> float:
    content_type = "application/x-ndjson" if vendor == "ollama" else "text/event-stream"
    pieces = in_reads(frames, read_size)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": content_type}, stream=Replay(pieces))

    spec = ModelSpec(name="b", provider=vendor, model="bench", base_url="http://bench.test")
    catalog = ModelCatalog([spec], "b", transports=lambda: httpx.MockTransport(handler))
    provider = catalog.get("b")
    request = CompletionRequest([Turn("user", "benchmark the parsers")])
    got = 0
    started = time.perf_counter()
    async for chunk in provider.stream(request):
        got += bool(chunk.text)
    elapsed = time.perf_counter() - started
    await catalog.aclose()
    assert got == chunks, (vendor, got)
    return elapsed / chunks * 1e6


def decoder_cost(vendor: str, frames: list[bytes], chunks: int) -> float:
    """Only the vendor decoder, fed pre-split payloads (no HTTP, no SSE framing)."""
    feed: Callable[[], object]
    if vendor == "openai":
        payloads = [f.decode()[6:].strip() for f in b"".join(frames).split(b"\n\n") if f]

        def feed() -> object:
            decoder = OpenAIStreamDecoder()
            return [decoder.feed(p) for p in payloads]
    elif vendor == "anthropic":
        events = []
        for frame in b"".join(frames).split(b"\n\n"):
            if frame:
                name, data = frame.decode().split("\n")
                events.append((name[7:], data[6:]))

        def feed() -> object:
            decoder = AnthropicStreamDecoder()
            return [decoder.feed(n, d) for n, d in events]
    else:
        lines = b"".join(frames).decode().splitlines()

        def feed() -> object:
            decoder = OllamaStreamDecoder()
            return [decoder.feed(line) for line in lines]

    started = time.perf_counter()
    feed()
    return (time.perf_counter() - started) / chunks * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"{args.chunks} chunks per run, {args.repeat} runs: best (median) microseconds per chunk")
    print(
        f"{'format':<10} {'client, read/frame':>20} {'client, 64KiB reads':>20} {'decoder only':>16}"
    )

    def cell(runs: list[float]) -> str:
        return f"{min(runs):.1f} ({statistics.median(runs):.1f})"

    for vendor in VENDORS:
        frames = recorded(vendor, args.chunks)
        per_frame = [
            await client_cost(vendor, frames, None, args.chunks) for _ in range(args.repeat)
        ]
        burst = [await client_cost(vendor, frames, 65536, args.chunks) for _ in range(args.repeat)]
        decode = [decoder_cost(vendor, frames, args.chunks) for _ in range(args.repeat)]
        print(f"{vendor:<10} {cell(per_frame):>20} {cell(burst):>20} {cell(decode):>16}")


if __name__ == "__main__":
    asyncio.run(main())
