"""``sanic-chat fake-llm``: the fake LLM's command-line options, and serving until
interrupted (exit status 2 and one line on stderr when it cannot listen)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import sys
from typing import Any

from ...startup import reason
from .directives import DirectiveError, FakeOptions, Fault

__all__ = ["add_arguments", "main_from_args", "run_fake_llm"]


def run_fake_llm(host: str, port: int, **options: Any) -> int:
    """Serve until interrupted (blocking). Options as :class:`FakeLLM`'s. Returns
    the exit status: 2, after one line on stderr, when it cannot listen."""

    from .server import serve_fake_llm  # here: building the parser loads no server

    async def main() -> None:
        try:
            server = await serve_fake_llm(host, port, **options)
        except OSError as exc:
            raise _CannotListen(_listen_problem(host, port, exc)) from None
        print(f"fake-llm listening on {server.base_url}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await server.close()

    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        with contextlib.suppress(KeyboardInterrupt):
            runner(main())
    except _CannotListen as exc:
        print(f"sanic-chat fake-llm: {exc}", file=sys.stderr)
        return 2
    return 0


class _CannotListen(Exception):
    pass


def _listen_problem(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"port {port} on {host} is in use: stop what listens there, or choose another "
            "port with --port (0: any free port)"
        )
    return f"cannot listen on {host}:{port}: {reason(exc)} (fix --host or --port)"


# argparse types: a wrong value is refused before anything starts, in one line
# ("argument --fault: ..."), with exit status 2


def _listen_port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 to 65535)")
    return port


def _fault(text: str) -> str:
    try:
        Fault.parse(text)
    except DirectiveError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _directives(text: str) -> str:
    try:
        FakeOptions().with_directives(text)
    except DirectiveError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=_listen_port, default=9001, help="0: any free port")
    parser.add_argument("--ttft-ms", type=float, default=200.0, help="pause before the first token")
    parser.add_argument("--tokens-per-second", type=float, default=50.0, help="0: unpaced")
    parser.add_argument("--reply-tokens", type=int, default=40, help="tokens per reply")
    parser.add_argument(
        "--fault", type=_fault, default=None, help="a fault for every request, e.g. status:503"
    )
    parser.add_argument(
        "--directives",
        type=_directives,
        default=None,
        help='default directives, e.g. "fault=status:429;retry_after=2;fail_first=1"',
    )
    parser.add_argument("--api-key", default=None, help="require this key (Bearer / x-api-key)")


def main_from_args(args: argparse.Namespace) -> int:
    return run_fake_llm(
        args.host,
        args.port,
        ttft_ms=args.ttft_ms,
        tps=args.tokens_per_second,
        tokens=args.reply_tokens,
        fault=args.fault,
        directives=args.directives,
        api_key=args.api_key,
    )
