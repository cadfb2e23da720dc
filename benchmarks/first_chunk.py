"""Time from ``message.create`` to the first ``generation.delta`` on the demo
model, one message at a time, against a server this script starts.

    python -m benchmarks.first_chunk --database sqlite --messages 100
    python -m benchmarks.first_chunk --database postgresql://postgres@127.0.0.1:5432/test

The demo model waits ``--ttft-ms`` before its first token, so the server's own
share is the measured time minus that.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import orjson
import websockets

from tests.server import demo_models_file, drop_schema, free_port, run_server


async def measure(ws_url: str, messages: int) -> tuple[list[float], list[float]]:
    first_chunk: list[float] = []
    accepted: list[float] = []
    async with websockets.connect(ws_url) as ws:
        conversation_id = None
        for i in range(messages):
            frame: dict[str, object] = {
                "type": "message.create",
                "client_id": str(uuid.uuid4()),
                "content": f"question {i}",
            }
            if conversation_id:
                frame["conversation_id"] = conversation_id
            sent = time.perf_counter()
            await ws.send(orjson.dumps(frame).decode())
            got_first = False
            while True:
                event = orjson.loads(await ws.recv())
                kind = event["type"]
                if kind == "message.accepted":
                    accepted.append((time.perf_counter() - sent) * 1000)
                    conversation_id = event["conversation_id"]
                elif kind == "generation.delta" and not got_first:
                    first_chunk.append((time.perf_counter() - sent) * 1000)
                    got_first = True
                elif kind.startswith("generation.") and kind not in (
                    "generation.delta",
                    "generation.started",
                ):
                    break
    return first_chunk, accepted


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database", default="sqlite", help="sqlite or a postgresql:// URL")
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--ttft-ms", type=float, default=150)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            "SANIC_CHAT_MODELS": demo_models_file(
                Path(tmp), ttft_ms=args.ttft_ms, tokens_per_second=400, reply_tokens=10
            )
        }
        schema = f"fc_{free_port()}"
        if args.database != "sqlite":
            env["SANIC_CHAT_DATABASE_URL"] = f"{args.database}?schema={schema}"
            env["SANIC_CHAT_AUTO_MIGRATE"] = "1"
        try:
            with run_server(env) as server:
                first, accepted = asyncio.run(measure(server.ws_url, args.messages))
        finally:
            if args.database != "sqlite":
                drop_schema(args.database, schema)
    over = [f - args.ttft_ms for f in first]
    print(
        f"{args.database.split('://')[0]}: {len(first)} messages; first chunk p50 "
        f"{statistics.median(first):.1f} ms, p99 {pct(first, 99):.1f} ms; server overhead "
        f"over the model's {args.ttft_ms:.0f} ms p50 {statistics.median(over):.1f} ms, "
        f"p99 {pct(over, 99):.1f} ms; message.accepted p50 {statistics.median(accepted):.1f} ms, "
        f"p99 {pct(accepted, 99):.1f} ms"
    )


if __name__ == "__main__":
    main()
