"""``sanic-chat``: serve, migrate, fake-llm, token."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from .config import ConfigError, Settings, parse_log_level, unknown_variables
from .startup import StartupError, check_address, check_bus, prepare_sqlite, redact_url

__all__ = ["main"]

log = logging.getLogger("sanic_chat")


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _served_app(name: str) -> Any:
    """The app factory of ``serve``, run in every worker process (and once in the
    main process): the app, with logging set up for this process."""
    from .app import create_app
    from .logging import configure_logging

    settings = Settings.from_env()
    app = create_app(settings, name=name)
    # after Sanic configured its loggers, so that JSON reaches theirs too
    configure_logging(settings.log_format, level=settings.log_level, node_id=app.ctx.node_id)
    logging.getLogger("sanic.error").addFilter(_startup_error_in_one_line)
    return app


def _startup_error_in_one_line(record: logging.LogRecord) -> bool:
    """Sanic logs what failed a worker's start-up with its traceback: a
    :class:`StartupError` says all there is to say in its one line."""
    error = record.exc_info[1] if record.exc_info else None
    if isinstance(error, StartupError):
        record.msg, record.args = f"sanic-chat: {error}", ()
        record.exc_info = record.exc_text = None
    return True


def _refuse(reason: str) -> int:
    """Says on stderr why the command does not run; 2 is the exit status of every
    configuration or usage error."""
    print(f"sanic-chat: {reason}", file=sys.stderr)
    return 2


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        return _refuse(f"configuration error: {exc}")
    if settings.auth == "none" and not _is_loopback(args.host) and not args.insecure_no_auth:
        return _refuse(
            f"refusing to listen on {args.host} with SANIC_CHAT_AUTH=none: anyone who "
            "can reach it would read and write every conversation. Set SANIC_CHAT_AUTH=jwt "
            "(see docs/security.md), listen on 127.0.0.1, or pass --insecure-no-auth if this "
            "network is trusted."
        )
    if args.workers > 1 and settings.bus_url.startswith("memory://"):
        return _refuse(
            "--workers > 1 needs a shared bus: set "
            "SANIC_CHAT_BUS_URL=redis://host:6379/0 (the in-memory bus serves one process only)"
        )
    if args.workers > 1 and settings.database_url.startswith("sqlite"):
        print(
            "sanic-chat: note: several workers on SQLite serialize their writes; use PostgreSQL "
            "(SANIC_CHAT_DATABASE_URL=postgresql://...) for real multi-worker deployments",
            file=sys.stderr,
        )
    _warn_unknown_variables(settings)
    problem = _check_environment(args, settings)
    if problem is not None:
        return _refuse(problem)
    metrics_dir: str | None = None
    if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # before prometheus-client is first imported: every worker writes its metrics
        # there and /metrics (answered by any one worker) sums them up
        metrics_dir = tempfile.mkdtemp(prefix="sanic-chat-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        return _run_server(args, settings)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _run_server(args: argparse.Namespace, settings: Settings) -> int:
    from functools import partial

    from sanic import Sanic
    from sanic.worker.loader import AppLoader

    from .providers.catalog import ConfigError as ModelsConfigError
    from .sanic_internals import stop_workers_from_the_monitor_loop

    try:
        loader = AppLoader(factory=partial(_served_app, "sanic_chat"))
        app = loader.load()
    except (ConfigError, ModelsConfigError, ValueError) as exc:
        return _refuse(f"configuration error: {exc}")
    app.prepare(
        host=args.host,
        port=args.port,
        workers=args.workers,
        single_process=args.workers == 1,
        access_log=args.access_log,
        motd=False,
    )
    where = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '') else args.host}:{args.port}/"
    serving = f"serving on {where} (database: {redact_url(settings.database_url)})"
    if settings.log_format == "json":
        log.info(serving)  # stdout and stderr carry JSON lines only
    else:
        print(f"sanic-chat: {serving}", flush=True)
    try:
        if args.workers == 1:
            Sanic.serve_single(primary=app)
        else:
            app.main_process_ready(stop_workers_from_the_monitor_loop)
            Sanic.serve(primary=app, app_loader=loader)
    except StartupError:
        # what changed since _check_environment; Sanic has logged it, in one line
        return 2
    return 0


def _check_environment(args: argparse.Namespace, settings: Settings) -> str | None:
    """What stops ``serve`` from starting, found before it prints "serving on":
    the address taken, the database URL malformed or its SQLite file unusable,
    Redis unreachable. None when all is well."""
    from .store.url import parse_url

    try:
        check_address(args.host, args.port)
        if settings.database_url.startswith("sqlite"):
            prepare_sqlite(settings)
        else:
            parse_url(settings.database_url)  # PostgreSQL: each worker checks it as it starts
        asyncio.run(check_bus(settings))
    except StartupError as exc:
        return str(exc)
    except ValueError as exc:
        return f"configuration error: SANIC_CHAT_DATABASE_URL: {exc}"
    return None


def _warn_unknown_variables(settings: Settings) -> None:
    """One line per ``SANIC_CHAT_*`` name that nothing reads: a misspelled
    setting would otherwise be ignored without a word."""
    for name, closest in unknown_variables():
        hint = f"; did you mean {closest}?" if closest else ""
        warning = f"{name} is not a sanic-chat setting and is ignored{hint}"
        if settings.log_format == "json":
            log.warning(warning)  # stdout and stderr carry JSON lines only
        else:
            print(f"sanic-chat: warning: {warning}", file=sys.stderr)


def _migrate(args: argparse.Namespace) -> int:
    from .wiring import migrate_store

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        return _refuse(f"configuration error: {exc}")
    _warn_unknown_variables(settings)
    try:
        # the store the server opens, through the same factory, with the schema made
        asyncio.run(migrate_store(settings))
    except StartupError as exc:
        return _refuse(str(exc))
    except ValueError as exc:  # a malformed URL
        return _refuse(f"configuration error: SANIC_CHAT_DATABASE_URL: {exc}")
    print(f"sanic-chat: schema is up to date ({redact_url(settings.database_url)})")
    return 0


def _fake_llm(args: argparse.Namespace) -> int:
    from .testing.fake_llm import cli as fake_llm

    return fake_llm.main_from_args(args)


def _token(args: argparse.Namespace) -> int:
    import time

    import jwt

    secret = os.environ.get("SANIC_CHAT_JWT_SECRET")
    if not secret:
        return _refuse("set SANIC_CHAT_JWT_SECRET to mint a development token")
    now = int(time.time())
    claims: dict[str, object] = {"sub": args.user, "iat": now, "exp": now + args.ttl}
    if os.environ.get("SANIC_CHAT_JWT_AUDIENCE"):
        claims["aud"] = os.environ["SANIC_CHAT_JWT_AUDIENCE"]
    if os.environ.get("SANIC_CHAT_JWT_ISSUER"):
        claims["iss"] = os.environ["SANIC_CHAT_JWT_ISSUER"]
    print(jwt.encode(claims, secret, algorithm="HS256"))
    return 0


def _port(text: str) -> int:
    """A TCP port to listen on, for argparse (its error: one line, exit status 2)."""
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a port number from 1 to 65535 (--port or SANIC_CHAT_PORT)"
        )
    return port


def _workers(text: str) -> int:
    try:
        workers = int(text)
    except ValueError:
        workers = 0
    if workers < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of processes, at least 1")
    return workers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sanic-chat", description="A real-time AI chat server (WebSocket + SSE)."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--host", default=os.environ.get("SANIC_CHAT_HOST") or "127.0.0.1")
    # a string default goes through ``type`` too: a wrong SANIC_CHAT_PORT is refused alike
    serve.add_argument(
        "--port",
        type=_port,
        default=os.environ.get("SANIC_CHAT_PORT") or "8000",
        help="(or SANIC_CHAT_PORT)",
    )
    serve.add_argument("--workers", type=_workers, default=1, help="processes serving (at least 1)")
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow SANIC_CHAT_AUTH=none on a non-loopback address (trusted networks only)",
    )
    serve.set_defaults(func=_serve)

    migrate = sub.add_parser("migrate", help="create or update the database schema")
    migrate.set_defaults(func=_migrate)

    fake = sub.add_parser(
        "fake-llm", help="a local LLM server speaking the OpenAI, Anthropic and Ollama formats"
    )
    # the options only: the fake server itself loads when the command runs
    from .testing.fake_llm import cli as fake_llm

    fake_llm.add_arguments(fake)
    fake.set_defaults(func=_fake_llm)

    token = sub.add_parser("token", help="mint a development JWT with SANIC_CHAT_JWT_SECRET")
    token.add_argument("--user", required=True)
    token.add_argument("--ttl", type=int, default=24 * 3600, help="lifetime in seconds")
    token.set_defaults(func=_token)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .logging import configure_logging

    try:
        level = parse_log_level(os.environ.get("SANIC_CHAT_LOG_LEVEL"))
    except ConfigError as exc:
        return _refuse(f"configuration error: {exc}")
    # our own logger only: Sanic configures its loggers itself, and a root
    # handler would print each of their lines twice
    log_format = os.environ.get("SANIC_CHAT_LOG_FORMAT", "").strip().lower()
    configure_logging("json" if log_format == "json" else "text", level=level)
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
