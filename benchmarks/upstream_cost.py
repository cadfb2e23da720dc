"""Client CPU per streamed chunk over a real loopback socket, by network backend.

The fake LLM runs as a separate process, so ``time.process_time`` of this one
is the provider client alone: httpx, httpcore, the network backend, SSE
framing, JSON and Chunk building. Each pass runs ``--streams`` concurrent
OpenAI-format replies of ``--tokens`` chunks through a catalog whose client
streams over either httpcore's anyio backend (httpx's default) or
:class:`~sanic_chat.providers.network.AsyncioNetworkBackend` (the catalog's).
A warm-up pass opens the connections first; backends take turns. Each stream
has a pool of its own (see :func:`measure`).

"whole" is a pass's CPU per chunk; "marginal" is what each extra chunk costs
(a pass with twice the chunks, minus the first), without per-request costs.

    python -m benchmarks.upstream_cost [--streams 200] [--tokens 100] [--tps 0]
        [--repeat 3] [--loop uvloop|asyncio]

``--tps 0`` sends each reply as fast as possible (many frames per read);
``--tps 50`` paces it like a model does (about one read per frame).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import httpx
import uvloop

from sanic_chat.core.ports import CompletionRequest, Provider, Turn
from sanic_chat.providers.catalog import POOL_LIMITS, ModelCatalog, pooled_transport
from sanic_chat.providers.spec import ModelSpec

TLS = httpx.create_ssl_context()  # loading CA certificates is slow: once will do
BACKENDS: dict[str, Callable[[], httpx.AsyncBaseTransport]] = {
    "anyio": lambda: httpx.AsyncHTTPTransport(verify=TLS, limits=POOL_LIMITS),
    "asyncio": lambda: pooled_transport(ssl_context=TLS),
}


def start_fake() -> tuple[subprocess.Popen[str], str]:
    fake = subprocess.Popen(
        [sys.executable, "-m", "sanic_chat.fake_llm", "--port", "0", "--ttft-ms", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert fake.stdout is not None
    line = fake.stdout.readline()
    if "listening on" not in line:
        fake.kill()
        raise SystemExit(f"the fake LLM did not start: {line!r}")
    return fake, line.rsplit(" ", 1)[1].strip()


async def one_pass(providers: list[Provider]) -> int:
    async def reply(number: int, provider: Provider) -> int:
        request = CompletionRequest([Turn("user", f"question {number}")])
        return sum([bool(chunk.text) async for chunk in provider.stream(request)])

    return sum(await asyncio.gather(*(reply(n, p) for n, p in enumerate(providers))))


async def measure(backend: str, base_url: str, args: argparse.Namespace) -> tuple[float, float]:
    """(whole, marginal) client CPU microseconds per chunk: a pass of ``tokens``
    chunks per reply, and the extra CPU of a pass of twice as many per extra chunk
    (which leaves out the per-request costs: connection pool, headers)."""

    def spec(tokens: int) -> ModelSpec:
        directives = f"tps={args.tps};tokens={tokens}"
        return ModelSpec(
            name=f"m{tokens}",
            provider="openai",
            model="m",
            base_url=base_url + "/v1",
            headers=(("X-Fake-LLM", directives),),
        )

    short, long = spec(args.tokens), spec(2 * args.tokens)
    # one catalog (one pool) per stream: httpcore 1.0's pool bookkeeping costs
    # O(connections x idle connections) per request start and end, which would
    # drown the per-chunk cost of 200 streams starting at once
    catalogs = [
        ModelCatalog([short, long], short.name, transport=BACKENDS[backend]())
        for _ in range(args.streams)
    ]
    cpu: dict[str, float] = {}
    try:
        await one_pass([c.get(short.name) for c in catalogs])  # opens the connections
        for which in (short, long):
            providers = [c.get(which.name) for c in catalogs]
            started = time.process_time()
            chunks = await one_pass(providers)
            cpu[which.name] = time.process_time() - started
            assert chunks == args.streams * int(which.name[1:]), chunks
    finally:
        for catalog in catalogs:
            await catalog.aclose()
    chunks = args.streams * args.tokens
    whole = cpu[short.name] / chunks * 1e6
    return whole, (cpu[long.name] - cpu[short.name]) / chunks * 1e6


async def main(args: argparse.Namespace) -> None:
    fake, base_url = start_fake()
    try:
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in BACKENDS}
        for _ in range(args.repeat):
            for name in BACKENDS:
                runs[name].append(await measure(name, base_url, args))
    finally:
        fake.terminate()
        fake.wait(10)
    print(
        f"{args.streams} streams x {args.tokens} chunks, tps={args.tps}, loop={args.loop}: "
        "client CPU microseconds per chunk, each run (median)"
    )
    print(f"  {'backend':<8} {'whole pass':>30}   {'marginal chunk':>30}")
    for name, results in runs.items():
        cells = []
        for column in (0, 1):
            values = [result[column] for result in results]
            each = " ".join(f"{value:6.1f}" for value in values)
            cells.append(f"{each} ({statistics.median(values):6.1f})")
        print(f"  {name:<8} {cells[0]:>30}   {cells[1]:>30}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--tps", type=float, default=0, help="tokens per second (0: unpaced)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    arguments = parser.parse_args()
    (uvloop.run if arguments.loop == "uvloop" else asyncio.run)(main(arguments))
