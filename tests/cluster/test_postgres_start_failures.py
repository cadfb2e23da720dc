"""PostgreSQL that cannot be used at start-up: ``sanic-chat serve`` (and ``sanic-chat
migrate``) stop at once with one line naming the cause and what to do -- a schema
missing with ``SANIC_CHAT_AUTO_MIGRATE=0``, a database that does not exist, a server
that does not answer -- and exit non-zero, without a traceback."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.conftest import require_postgres
from tests.server import free_port

from .test_postgres_first_run import assert_clean, schema_url, serve_once, server_env, tables_in

pytestmark = pytest.mark.postgres

__all__ = ["schema_url"]  # a fixture, used by name


def test_with_auto_migrate_off_an_empty_database_stops_the_start_in_one_line(
    schema_url: str,
) -> None:
    status, lines = serve_once(DATABASE_URL=schema_url, AUTO_MIGRATE="0")
    assert status != 0
    said = [line for line in lines if "sanic-chat migrate" in line]
    assert len(said) == 1, lines
    assert "no sanic-chat tables" in said[0]
    assert_clean("\n".join(lines))
    assert tables_in(schema_url) == set()  # nothing was made behind the operator's back


def test_a_missing_database_stops_the_start_in_one_line() -> None:
    base = require_postgres().rsplit("/", 1)[0]
    name = f"does_not_exist_{uuid.uuid4().hex[:8]}"
    status, lines = serve_once(DATABASE_URL=f"{base}/{name}")
    assert status != 0
    said = [line for line in lines if f'database "{name}" does not exist' in line]
    assert len(said) == 1, lines
    assert "SANIC_CHAT_DATABASE_URL" in said[0]
    assert_clean("\n".join(lines))


def test_migrate_on_an_unreachable_database_says_why_in_one_line() -> None:
    require_postgres()
    port = free_port()  # nothing listens there
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [sys.executable, "-m", "sanic_chat", "migrate"],
            env=server_env(
                Path(tmp), DATABASE_URL=f"postgresql://postgres:s3cret@127.0.0.1:{port}/test"
            ),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode != 0
    said = [line for line in done.stderr.splitlines() if "warning:" not in line]
    assert said == [
        f"sanic-chat: cannot use PostgreSQL at postgresql://postgres:***@127.0.0.1:{port}/test: "
        f"connection refused (127.0.0.1:{port}); start PostgreSQL, or fix SANIC_CHAT_DATABASE_URL"
    ], done.stderr
