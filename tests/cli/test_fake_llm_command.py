"""``sanic-chat fake-llm``: the documented command serves the fake LLM from its package
outside the runtime path (sanic_chat.testing.fake_llm), and the rest of the command
line never loads the fake server."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx

from sanic_chat.testing.fake_llm import reply_text
from tests.cli.support import run_cli
from tests.server import free_port, launch, wait_ready


def test_the_command_lists_its_options(tmp_path: Path) -> None:
    result = run_cli("fake-llm", "--help", home=tmp_path)
    assert result.returncode == 0, result.output
    for option in ("--port", "--ttft-ms", "--tokens-per-second", "--fault", "--directives"):
        assert option in result.stdout, result.output


def test_the_command_serves_the_vendor_formats(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "fake.log"
    argv = ("-m", "sanic_chat", "fake-llm", "--port", str(port), "--ttft-ms", "0")
    process = launch(argv, log)
    try:
        wait_ready(f"http://127.0.0.1:{port}/healthz", process, log)
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"model": "fake", "messages": [{"role": "user", "content": "hi"}]},
            headers={"X-Fake-LLM": "tokens=4"},
            timeout=10,
        )
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(10)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == reply_text("hi", 4)
    assert f"fake-llm listening on http://127.0.0.1:{port}" in log.read_text()


def test_the_module_runs_as_the_command_does() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sanic_chat.testing.fake_llm", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "--directives" in result.stdout


def test_the_server_and_its_command_line_do_not_load_the_fake_server() -> None:
    """`sanic-chat serve` builds the whole parser (fake-llm's options included) and
    the app: neither loads the fake server (the import contract runtime-no-testing
    covers the app's imports; this covers the parser's lazy one)."""
    probe = (
        "import sys; from sanic_chat.cli import build_parser; build_parser(); "
        "import sanic_chat.app; "
        "print(sorted(m for m in sys.modules if m.startswith('sanic_chat.testing')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    loaded = result.stdout.strip()
    assert "fake_llm.server" not in loaded and "fake_llm.http" not in loaded, loaded
