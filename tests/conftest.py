"""Shared test configuration.

Tests that need PostgreSQL, Redis or Chromium skip with a clear reason when the
service is absent -- except when ``SANIC_CHAT_REQUIRE_SERVICES=1`` (set by
``.ci/run``), where an absent service is a failure, never a silent skip.
"""

from __future__ import annotations

import os
import socket

import pytest

POSTGRES_URL = os.environ.get(
    "SANIC_CHAT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("SANIC_CHAT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
CHROMIUM_PATH = os.environ.get("SANIC_CHAT_TEST_CHROMIUM", "/usr/bin/chromium")


def services_required() -> bool:
    return os.environ.get("SANIC_CHAT_REQUIRE_SERVICES") == "1"


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def require(available: bool, what: str) -> None:
    """Skip (locally) or fail (under CI) when ``what`` is not available."""
    if available:
        return
    if services_required():
        pytest.fail(f"{what} is required under CI (SANIC_CHAT_REQUIRE_SERVICES=1) but absent")
    pytest.skip(f"{what} is not available on this machine")


def require_postgres() -> str:
    require(_port_open("127.0.0.1", 5432), "PostgreSQL on 127.0.0.1:5432")
    return POSTGRES_URL


def require_redis() -> str:
    require(_port_open("127.0.0.1", 6379), "Redis on 127.0.0.1:6379")
    return REDIS_URL


def require_chromium() -> str:
    require(os.path.exists(CHROMIUM_PATH), f"Chromium at {CHROMIUM_PATH}")
    return CHROMIUM_PATH
