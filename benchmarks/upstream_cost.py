"""Client CPU per streamed chunk over a real loopback socket, by transport.

The fake LLM runs as a separate process, so ``time.process_time`` of this one
is the provider client alone: httpx, the pool, the network backend, SSE
framing, JSON and Chunk building. Each pass runs ``--streams`` concurrent
OpenAI-format replies of ``--tokens`` chunks through a catalog whose client
streams over one of:

* ``anyio``: httpx's own transport (httpcore's pool and h11 on anyio);
* ``lean``: :class:`~sanic_chat.providers.pool.ConnectionPool` (the catalog's:
  :class:`~sanic_chat.providers.http11.Http11Connection` on httptools).

A warm-up pass opens the connections first; transports take turns. By default
each stream has a pool of its own; ``--shared`` puts every stream on ONE client
and pool, as a server under load has (one pool per upstream), which is where
httpcore's O(connections x requests) bookkeeping shows.

"whole" is a pass's CPU per chunk; "marginal" is what each extra chunk costs
(a pass with twice the chunks, minus the first), without per-request costs;
"request" is a pass's CPU per reply.

    python -m benchmarks.upstream_cost [--streams 200] [--tokens 100] [--tps 0]
        [--repeat 3] [--loop uvloop|asyncio] [--shared] [--transports lean,anyio]

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
from sanic_chat.providers.catalog import POOL_LIMITS, ModelCatalog
from sanic_chat.providers.pool import ConnectionPool
from sanic_chat.providers.spec import ModelSpec

TLS = httpx.create_ssl_context()  # loading CA certificates is slow: once will do
BACKENDS: dict[str, Callable[[], httpx.AsyncBaseTransport]] = {
    "anyio": lambda: httpx.AsyncHTTPTransport(verify=TLS, limits=POOL_LIMITS),
    "lean": lambda: ConnectionPool.from_limits(POOL_LIMITS, ssl_context=TLS),
}


def start_fake() -> tuple[subprocess.Popen[str], str]:
    fake = subprocess.Popen(
        [sys.executable, "-m", "sanic_chat.testing.fake_llm", "--port", "0", "--ttft-ms", "0"],
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


async def measure(
    backend: str, base_url: str, args: argparse.Namespace
) -> tuple[float, float, float]:
    """(whole, marginal, request): client CPU microseconds per chunk of a pass of
    ``tokens`` chunks per reply, the extra CPU of a pass of twice as many per
    extra chunk (which leaves out the per-request costs: connection pool,
    headers), and the CPU per reply of the first pass."""

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
    # without --shared, one catalog (one pool) per stream: httpcore 1.0's pool
    # bookkeeping costs O(connections x queued requests) per request start and
    # end, which would drown the per-chunk cost of 200 streams starting at once
    catalogs = [
        ModelCatalog([short, long], short.name, transports=BACKENDS[backend])
        for _ in range(1 if args.shared else args.streams)
    ]

    def providers_of(name: str) -> list[Provider]:
        return [catalogs[n % len(catalogs)].get(name) for n in range(args.streams)]

    cpu: dict[str, float] = {}
    try:
        await one_pass(providers_of(short.name))  # opens the connections
        for which in (short, long):
            providers = providers_of(which.name)
            started = time.process_time()
            chunks = await one_pass(providers)
            cpu[which.name] = time.process_time() - started
            assert chunks == args.streams * int(which.name[1:]), chunks
    finally:
        for catalog in catalogs:
            await catalog.aclose()
    chunks = args.streams * args.tokens
    whole = cpu[short.name] / chunks * 1e6
    marginal = (cpu[long.name] - cpu[short.name]) / chunks * 1e6
    return whole, marginal, cpu[short.name] / args.streams * 1e6


async def main(args: argparse.Namespace) -> None:
    fake, base_url = start_fake()
    try:
        names = args.transports.split(",")
        runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in names}
        for _ in range(args.repeat):
            for name in names:
                runs[name].append(await measure(name, base_url, args))
    finally:
        fake.terminate()
        fake.wait(10)
    pools = "ONE shared pool" if args.shared else "a pool per stream"
    print(
        f"{args.streams} streams x {args.tokens} chunks, tps={args.tps}, loop={args.loop}, "
        f"{pools}: client CPU microseconds per chunk and per request, each run (median)"
    )
    print(f"  {'transport':<9} {'whole pass':>27}   {'marginal chunk':>27}   {'request':>33}")
    for name, results in runs.items():
        cells = []
        for column in (0, 1, 2):
            values = [result[column] for result in results]
            form = "8.0f" if column == 2 else "6.1f"
            each = " ".join(f"{value:{form}}" for value in values)
            cells.append(f"{each} ({statistics.median(values):{form}})")
        print(f"  {name:<9} {cells[0]:>27}   {cells[1]:>27}   {cells[2]:>33}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--tps", type=float, default=0, help="tokens per second (0: unpaced)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--shared", action="store_true", help="every stream on one pool")
    parser.add_argument(
        "--transports", default=",".join(BACKENDS), help=f"a subset of {','.join(BACKENDS)}"
    )
    arguments = parser.parse_args()
    (uvloop.run if arguments.loop == "uvloop" else asyncio.run)(main(arguments))
