"""Secure by default: without authentication the server listens on loopback
only, unless told in so many words that the network is trusted."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import httpx
import pytest

from tests.server import free_port, run_server

from .support import SECRET


def serve(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as data_dir:
        return subprocess.run(
            [sys.executable, "-m", "sanic_chat", "serve", "--port", str(free_port()), *args],
            env={**os.environ, "SANIC_CHAT_DATA_DIR": data_dir, "SANIC_CHAT_AUTH": "none", **env},
            capture_output=True,
            text=True,
            timeout=30,
        )


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "example.com"])
def test_no_auth_on_a_public_address_refuses_to_start(host: str) -> None:
    result = serve("--host", host)
    assert result.returncode == 2
    assert f"refusing to listen on {host} with SANIC_CHAT_AUTH=none" in result.stderr
    assert "--insecure-no-auth" in result.stderr and "SANIC_CHAT_AUTH=jwt" in result.stderr


def test_insecure_no_auth_lets_it_start_on_every_interface() -> None:
    with run_server(
        {"SANIC_CHAT_AUTH": "none"}, args=("--host", "0.0.0.0", "--insecure-no-auth")
    ) as server:
        assert httpx.get(f"{server.base_url}/api/v1/conversations").status_code == 200


def test_jwt_auth_may_listen_on_every_interface() -> None:
    env = {"SANIC_CHAT_AUTH": "jwt", "SANIC_CHAT_JWT_SECRET": SECRET}
    with run_server(env, args=("--host", "0.0.0.0")) as server:
        assert httpx.get(f"{server.base_url}/api/v1/conversations").status_code == 401


def test_a_short_jwt_secret_refuses_to_start_and_is_not_echoed() -> None:
    result = serve(SANIC_CHAT_AUTH="jwt", SANIC_CHAT_JWT_SECRET="hunter2")
    assert result.returncode == 2
    assert "at least 32" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
