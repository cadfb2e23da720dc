"""PostgreSQL as a new operator meets it: ``sanic-chat serve`` pointed at an empty
database migrates it (several servers starting at once included); with
``SANIC_CHAT_AUTO_MIGRATE=0``, or a database that cannot be used, it stops at once
with one line; and a database lost while serving is named in the log and in
``/readyz`` until it comes back, when the server recovers by itself."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg2
import pytest

from tests.chaos import TcpProxy
from tests.conftest import require_postgres
from tests.server import (
    RunningServer,
    demo_models_file,
    drop_test_schema,
    free_port,
    start_server,
    wait_ready,
)
from tests.transports.support import ws_client

pytestmark = pytest.mark.postgres

#: what a server writes when start-up or an outage goes wrong in ways operators must never see
NEVER_LOGGED = (
    "Traceback",
    "Future exception was never retrieved",
    "Unclosed connection",
    "retry with the same client_id",  # the clients' text, not the operators'
)


@pytest.fixture
def schema_url() -> Iterator[str]:
    """A URL to a schema nobody made yet (dropped at the end if something made it)."""
    url = f"{require_postgres()}?schema=t_first_{uuid.uuid4().hex[:12]}"
    yield url
    drop_test_schema(url)


def tables_in(url: str) -> set[str]:
    base, _, query = url.partition("?")
    schema = query.split("schema=", 1)[1]
    conn = psycopg2.connect(base, connect_timeout=5)
    try:
        with conn.cursor() as cursor:
            cursor.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY tablename",
                (schema,),
            )
            return {row[0] for row in cursor.fetchall()}
    finally:
        conn.close()


def server_env(directory: Path, **settings: str) -> dict[str, str]:
    """A server's environment: the demo model, ``settings`` (``SANIC_CHAT_*`` names without
    the prefix), and auto-migrate at its default unless given."""
    env = {k: v for k, v in os.environ.items() if k != "SANIC_CHAT_AUTO_MIGRATE"}
    env.update(
        {
            "SANIC_CHAT_DATA_DIR": str(directory),
            "SANIC_CHAT_MODELS": demo_models_file(directory, ttft_ms=10, reply_tokens=5),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update({f"SANIC_CHAT_{name}": value for name, value in settings.items()})
    return env


@contextlib.contextmanager
def servers(count: int, **settings: str) -> Iterator[list[RunningServer]]:
    """``count`` servers, all launched before any is waited for (their start-ups race)."""
    with contextlib.ExitStack() as stack:
        started: list[RunningServer] = []
        for _ in range(count):
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            server = start_server(server_env(directory, **settings), directory / "server.log")
            stack.callback(server.stop)
            started.append(server)
        for server in started:
            wait_ready(f"{server.base_url}/healthz", server.process, server.log_path, 60.0)
        yield started


def serve_once(**settings: str) -> tuple[int, list[str]]:
    """Run ``sanic-chat serve`` that is expected to stop by itself: its exit status and
    the lines it wrote."""
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [sys.executable, "-m", "sanic_chat", "serve", "--port", str(free_port())],
            env=server_env(Path(tmp), **settings),
            capture_output=True,
            text=True,
            timeout=60,
        )
    return done.returncode, (done.stdout + done.stderr).splitlines()


async def chat(server: RunningServer) -> None:
    async with ws_client(server) as ws:
        accepted = await ws.create("hello")
        end = await ws.until_terminal(accepted["generation_id"])
        assert end["type"] == "generation.completed", end


def readyz(server: RunningServer) -> httpx.Response:
    return httpx.get(f"{server.base_url}/readyz", timeout=10.0)


def wait_for(what: str, check: object, server: RunningServer, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what}; readyz: {readyz(server).text}\n{server.log()}"
        time.sleep(0.1)


def assert_clean(log: str) -> None:
    for text in NEVER_LOGGED:
        assert text not in log, f"{text!r} in the log:\n{log}"


# --------------------------------------------------------------------------- first run


async def test_servers_started_together_on_an_empty_database_migrate_it_and_serve(
    schema_url: str,
) -> None:
    with servers(4, DATABASE_URL=schema_url) as started:
        for server in started:
            assert readyz(server).status_code == 200, server.log()
            await chat(server)
        assert tables_in(schema_url) == {"conversation", "message"}
        for server in started:
            assert_clean(server.log())


# --------------------------------------------------------------------------- outage


def test_a_lost_database_is_named_until_it_returns_and_the_server_recovers(
    schema_url: str,
) -> None:
    with TcpProxy(5432) as proxy:
        # upkeep every 0.5 s: each check of the database while it is gone is a
        # connection refused, which used to leak a half-made connection each time
        with servers(1, DATABASE_URL=proxy.url_for(schema_url), LEASE_S="1.5") as (server,):
            assert readyz(server).status_code == 200, server.log()
            proxy.cut()
            cause = f"connection refused (127.0.0.1:{proxy.port})"

            def named() -> bool:
                response = readyz(server)
                return (
                    response.status_code == 503
                    and response.json()["checks"]["database"] == f"unreachable: {cause}"
                )

            wait_for("/readyz names the cause", named, server)
            logged = f"database unreachable: {cause}"
            wait_for("the log names the cause", lambda: logged in server.log(), server)
            time.sleep(3.0)  # several checks more, all refused
            assert server.log().count(logged) == 1, server.log()  # once, not once per check

            proxy.restore()
            wait_for("ready again", lambda: readyz(server).status_code == 200, server)
            wait_for(
                "the log says it is back",
                lambda: "database reachable again" in server.log(),
                server,
            )
            asyncio.run(chat(server))
            assert_clean(server.log())
