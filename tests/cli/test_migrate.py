"""``sanic-chat migrate`` opens the store the server opens (``wiring.open_store_for``):
on PostgreSQL, a server told not to migrate refuses an empty schema in one line
naming the command, the command makes the schema, and then the server's own
factory finds it complete."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sanic_chat.config import Settings
from sanic_chat.wiring import open_store_for
from tests.conftest import require_postgres
from tests.server import drop_schema, free_port

from .support import assert_one_clear_line, run_cli


@pytest.fixture
def postgres_schema() -> Iterator[tuple[str, str]]:
    base = require_postgres()
    schema = f"test_cli_migrate_{uuid.uuid4().hex[:12]}"
    yield base, schema
    drop_schema(base, schema)


def test_migrate_makes_the_schema_the_server_then_finds(
    tmp_path: Path, postgres_schema: tuple[str, str]
) -> None:
    base, schema = postgres_schema
    url = f"{base}?schema={schema}"
    env = {"SANIC_CHAT_DATABASE_URL": url, "SANIC_CHAT_AUTO_MIGRATE": "0"}
    refused = run_cli("serve", "--port", str(free_port()), home=tmp_path, env=env)
    assert_one_clear_line(refused, "has no sanic-chat tables: run `sanic-chat migrate`")

    migrated = run_cli("migrate", home=tmp_path, env=env)
    assert migrated.returncode == 0, migrated.output
    assert "sanic-chat: schema is up to date" in migrated.stdout, migrated.output

    settings = Settings.from_env(env)

    async def schema_is_there() -> list[str]:
        store = await open_store_for(settings)  # auto_migrate off: it only checks
        try:
            return list(await store.missing_schema())  # type: ignore[attr-defined]
        finally:
            await store.close()

    assert asyncio.run(schema_is_there()) == []
