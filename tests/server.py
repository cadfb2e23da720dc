"""Run a real sanic-chat server (a subprocess on a free loopback port) for
end-to-end tests, and a fake LLM beside it when a test needs one."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks._support import drop_schema


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    base_url: str
    ws_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str]
    #: started in a session (process group) of its own: stop() also SIGKILLs the group
    own_session: bool = False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.own_session:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)  # any worker left behind
        return self.process.returncode

    def wait_workers(self, workers: int, timeout: float = 30.0) -> None:
        """Until ``workers`` workers logged "Worker ready". Polled often, so that a test
        that acts at once acts within moments of the last one -- before Sanic's main
        process has taken note of it (it looks every 0.1 s), the moment of start-up races."""
        deadline = time.monotonic() + timeout
        while self.log().count("Worker ready") < workers:
            assert self.process.poll() is None, self.log()
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.005)


def launch(
    argv: Sequence[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    own_session: bool = False,
) -> subprocess.Popen[bytes]:
    """``python argv...``, its stdout and stderr into ``log_path``; not waited for.
    ``own_session``: a session (process group) of its own -- Sanic's worker manager,
    when a worker fails, SIGKILLs its workers' whole process group, which must not
    be the test run's."""
    with open(log_path, "wb") as log_file:
        return subprocess.Popen(
            [sys.executable, *argv],
            env=None if env is None else dict(env),
            cwd=cwd,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=own_session,
        )


def start_server(
    env: Mapping[str, str],
    log_path: Path,
    *,
    port: int | None = None,
    args: Sequence[str] = (),
    own_session: bool = False,
) -> RunningServer:
    """``sanic-chat serve`` with exactly ``env`` as its environment; not waited for
    (:func:`wait_ready`). :func:`run_server` is this with the waiting and stopping."""
    port = port or free_port()
    argv = ("-m", "sanic_chat", "serve", "--port", str(port), *args)
    process = launch(argv, log_path, env=env, own_session=own_session)
    base_url = f"http://127.0.0.1:{port}"
    return RunningServer(
        base_url, f"ws://127.0.0.1:{port}/ws", process, log_path, dict(env), own_session
    )


def wait_ready(
    url: str, process: subprocess.Popen[bytes], log_path: Path, timeout: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"server did not become ready at {url}:\n{log_path.read_text()}")


@contextlib.contextmanager
def run_server(
    env: Mapping[str, str] | None = None,
    *,
    args: tuple[str, ...] = (),
    port: int | None = None,
    data_dir: str | None = None,
    own_session: bool = False,
) -> Iterator[RunningServer]:
    """The one launcher of a test server: ``sanic-chat serve`` on a free loopback
    port with this process's environment plus ``env``, ready (``/healthz``) when
    yielded, stopped with SIGTERM (SIGKILL after 30 s) at the end and its throwaway
    PostgreSQL schema dropped. ``own_session``: as a cluster node -- in a process
    group of its own (see :func:`launch`), yielded once every worker serves (a
    worker told to stop while still starting may die of the signal, or miss it and
    be stopped only when the main process exits), the whole group SIGKILLed last."""
    with tempfile.TemporaryDirectory(prefix="sanic-chat-test-") as tmp:
        full_env = {
            **os.environ,
            "SANIC_CHAT_DATA_DIR": data_dir or tmp,
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        log_path = Path(tmp) / "server.log"
        server = start_server(full_env, log_path, port=port, args=args, own_session=own_session)
        try:
            wait_ready(f"{server.base_url}/healthz", server.process, log_path)
            if own_session:
                workers = int(args[args.index("--workers") + 1]) if "--workers" in args else 1
                server.wait_workers(workers)
            yield server
        finally:
            server.stop()
            drop_test_schema(full_env.get("SANIC_CHAT_DATABASE_URL", ""))


DEMO_MODELS_TOML = """
default = "demo"
[models.demo]
provider = "demo"
ttft_ms = {ttft_ms}
tokens_per_second = {tokens_per_second}
reply_tokens = {reply_tokens}
"""


def demo_models_file(
    directory: Path, *, ttft_ms: float = 50, tokens_per_second: float = 200, reply_tokens: int = 30
) -> str:
    path = directory / "models.toml"
    path.write_text(
        DEMO_MODELS_TOML.format(
            ttft_ms=ttft_ms, tokens_per_second=tokens_per_second, reply_tokens=reply_tokens
        )
    )
    return str(path)


def drop_test_schema(database_url: str) -> None:
    """Drop the throwaway schema of a test server (``?schema=t_...``), so that
    test runs leave the shared database as they found it."""
    if not database_url.startswith("postgres") or "schema=t_" not in database_url:
        return
    base, _, query = database_url.partition("?")
    schema = query.split("schema=", 1)[1].split("&", 1)[0]
    import psycopg2  # installed with aiopg

    with contextlib.suppress(psycopg2.Error):
        drop_schema(base, schema)


def migrate_store(url: str) -> None:
    """The store's own migration on ``url``, in a thread: callers may be inside a
    running event loop."""
    from sanic_chat.store import open_store

    async def run() -> None:
        store = await open_store(url)
        try:
            await store.migrate()
        finally:
            await store.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()


@contextlib.contextmanager
def migrated_schema(schema: str) -> Iterator[str]:
    """A fresh schema on the shared PostgreSQL test database, made by the store's own
    migration and dropped afterwards; yields its URL (``...?schema=<schema>``)."""
    from tests.conftest import require_postgres

    base = require_postgres()
    url = f"{base}?schema={schema}"
    migrate_store(url)
    try:
        yield url
    finally:
        drop_schema(base, schema)


def database_env(backend: str) -> dict[str, str]:
    """Server environment for ``backend`` ("sqlite": the embedded default in the
    server's temp data dir; "postgres": a fresh schema on the shared test
    database, migrated at start-up)."""
    if backend == "sqlite":
        return {}
    from tests.conftest import require_postgres

    url = require_postgres()
    schema = f"t_{os.getpid()}_{free_port()}"
    return {
        "SANIC_CHAT_DATABASE_URL": f"{url}?schema={schema}",
        "SANIC_CHAT_AUTO_MIGRATE": "1",
    }
