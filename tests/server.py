"""Run a real sanic-chat server (a subprocess on a free loopback port) for
end-to-end tests, and a fake LLM beside it when a test needs one."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx


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
        return self.process.returncode


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
) -> Iterator[RunningServer]:
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="sanic-chat-test-") as tmp:
        full_env = {
            **os.environ,
            "SANIC_CHAT_DATA_DIR": data_dir or tmp,
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        log_path = Path(tmp) / "server.log"
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "sanic_chat", "serve", "--port", str(port), *args],
                env=full_env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
            server = RunningServer(
                f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/ws", process, log_path, full_env
            )
            try:
                wait_ready(f"{server.base_url}/healthz", process, log_path)
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

    try:
        connection = psycopg2.connect(base, connect_timeout=5)
    except psycopg2.Error:
        return
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        connection.close()


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
