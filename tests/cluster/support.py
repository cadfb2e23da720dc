"""A cluster for tests: one PostgreSQL schema and one Redis key prefix shared by several
real ``sanic-chat serve`` processes (the nodes), each on its own loopback port.

Isolation on the shared services: the schema is made with ``sanic-chat migrate`` (the
documented deployment step) and dropped afterwards; every Redis key and channel lives
under the cluster's ``SANIC_CHAT_BUS_PREFIX`` and its keys are deleted afterwards.
Nothing else on PostgreSQL or Redis is touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg2
import redis

from tests.server import RunningServer, drop_schema, run_server

#: demo models, paced: ``quick`` ends at once, ``steady`` streams for about 2 s,
#: ``long`` for about 20 s (time to kill or cut something mid-reply)
MODELS_TOML = """
default = "quick"
[models.quick]
provider = "demo"
ttft_ms = 20
tokens_per_second = 200
reply_tokens = 20
[models.steady]
provider = "demo"
ttft_ms = 20
tokens_per_second = 40
reply_tokens = 80
[models.long]
provider = "demo"
ttft_ms = 20
tokens_per_second = 15
reply_tokens = 300
"""

#: the lease of a running reply in these tests (the default is 15 s)
LEASE_S = 3.0

TERMINAL = ("generation.completed", "generation.cancelled", "generation.failed")


def report(name: str, seconds: float) -> None:
    """A measurement, printed (``pytest -s``) and never asserted."""
    print(f"\n[measure] {name}: {seconds:.2f} s", flush=True)


@dataclass
class Cluster:
    postgres_url: str
    schema: str
    redis_url: str
    prefix: str
    directory: Path

    @property
    def database_url(self) -> str:
        return f"{self.postgres_url}?schema={self.schema}"

    def env(self, **overrides: str) -> dict[str, str]:
        """A node's environment; ``overrides`` are ``SANIC_CHAT_*`` names without the prefix."""
        env = {
            "SANIC_CHAT_DATABASE_URL": self.database_url,
            "SANIC_CHAT_AUTO_MIGRATE": "0",
            "SANIC_CHAT_BUS_URL": self.redis_url,
            "SANIC_CHAT_BUS_PREFIX": self.prefix,
            "SANIC_CHAT_MODELS": str(self.directory / "models.toml"),
            "SANIC_CHAT_LEASE_S": str(LEASE_S),
            "SANIC_CHAT_CHECKPOINT_INTERVAL_S": "0.2",
            "SANIC_CHAT_TAIL_TTL_S": "30",
            "SANIC_CHAT_DRAIN_TIMEOUT_S": "10",
            "SANIC_CHAT_MAX_RUNNING_REPLIES_PER_USER": "200",
            "SANIC_CHAT_MAX_CONNECTIONS_PER_USER": "200",
            "SANIC_CHAT_LOG_FORMAT": "json",
        }
        env.update({f"SANIC_CHAT_{name}": value for name, value in overrides.items()})
        return env

    @contextlib.contextmanager
    def node(
        self, name: str, *, args: tuple[str, ...] = (), **overrides: str
    ) -> Iterator[RunningServer]:
        """A running node; stopped with SIGTERM (if still alive) at the end."""
        env = self.env(NODE_ID=name, **overrides)
        with run_node(env, args=args) as server:
            yield server

    def query(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        """The rows of ``sql`` (``{schema}`` is the cluster's schema), read straight from
        PostgreSQL on a connection of its own."""
        conn = psycopg2.connect(self.postgres_url, connect_timeout=5)
        try:
            with conn.cursor() as cursor:
                cursor.execute(sql.replace("{schema}", self.schema), params)
                return list(cursor.fetchall())
        finally:
            conn.close()

    def stored(self, message_id: str) -> dict[str, Any]:
        """A message row, read straight from the cluster's schema."""
        keys = ("id", "role", "content", "status", "error_code")
        rows = self.query(
            f'SELECT {", ".join(keys)} FROM "{{schema}}".message WHERE id = %s', message_id
        )
        assert rows, f"message {message_id} is not stored"
        return dict(zip(keys, rows[0], strict=True))

    def count_messages(self, conversation_id: str) -> dict[str, int]:
        """How many messages of each role a conversation holds."""
        sql = (
            'SELECT role, count(*) FROM "{schema}".message WHERE conversation_id = %s GROUP BY role'
        )
        return {role: int(count) for role, count in self.query(sql, conversation_id)}


@contextlib.contextmanager
def run_node(env: Mapping[str, str], *, args: tuple[str, ...] = ()) -> Iterator[RunningServer]:
    """``sanic-chat serve`` as a node: in a process group of its own, yielded once every
    worker serves, the group SIGKILLed at the end (``run_server(own_session=True)``)."""
    with run_server(env, args=args, own_session=True) as server:
        yield server


@contextlib.contextmanager
def cluster(postgres_url: str, redis_url: str, directory: Path) -> Iterator[Cluster]:
    schema = f"cluster_{uuid.uuid4().hex[:16]}"
    prefix = f"sanic-chat-test:cluster:{uuid.uuid4().hex[:12]}"
    (directory / "models.toml").write_text(MODELS_TOML)
    made = Cluster(postgres_url, schema, redis_url, prefix, directory)
    migrate = subprocess.run(
        [sys.executable, "-m", "sanic_chat", "migrate"],
        env={**os.environ, "SANIC_CHAT_DATABASE_URL": made.database_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert migrate.returncode == 0, migrate.stderr
    try:
        yield made
    finally:
        drop_schema(postgres_url, schema)
        client = redis.Redis.from_url(redis_url)
        try:
            for key in client.scan_iter(match=f"{prefix}:*", count=1000):
                client.delete(key)
        finally:
            client.close()


def kill(server: RunningServer) -> None:
    """SIGKILL: the node dies at once, running replies and all."""
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(10)


async def wait_ready_status(server: RunningServer, status: int, timeout: float = 20.0) -> float:
    """Poll /readyz until it answers ``status``; the seconds it took."""
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=10.0) as client:
        while True:
            response = await client.get(f"{server.base_url}/readyz")
            if response.status_code == status:
                return time.monotonic() - started
            assert time.monotonic() - started < timeout, (response.status_code, response.text)
            await asyncio.sleep(0.1)


def metric(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """One sample's value from Prometheus text (0.0 when absent)."""
    selector = ""
    if labels:
        selector = "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
    for line in text.splitlines():
        if line.startswith(f"{name}{selector} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
