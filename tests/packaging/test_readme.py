"""README.md's "Talking to it" examples, run as a reader pastes them: each shell
block goes to bash, against a real server (the port substituted for 8000),
with `python3` being this interpreter, and must show a whole reply."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require
from tests.server import RunningServer, demo_models_file, run_server

README = Path(__file__).resolve().parents[2] / "README.md"


def talking_blocks(text: str) -> list[str]:
    """The ```sh blocks of the "Talking to it" section."""
    start = text.index("## Talking to it")
    end = text.index("\n## ", start + 1)
    return re.findall(r"^```sh\n(.*?)^```", text[start:end], re.S | re.M)


def block_with(marker: str, text: str | None = None) -> str:
    blocks = [b for b in talking_blocks(text or README.read_text()) if marker in b]
    assert len(blocks) == 1, f"README's 'Talking to it' should have one block with {marker!r}"
    return blocks[0]


def run_block(block: str, server: RunningServer, tmp_path: Path) -> str:
    """Run ``block`` with bash against ``server``; its output (stdout)."""
    require(shutil.which("curl") is not None, "curl")
    port = server.base_url.rsplit(":", 1)[1]
    script = block.replace("127.0.0.1:8000", f"127.0.0.1:{port}").replace(
        "localhost:8000", f"127.0.0.1:{port}"
    )
    assert script != block, "the README example should talk to 127.0.0.1:8000"
    # the reader's python3 is the virtualenv's; here, the interpreter of the tests
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python3", "python"):
        (bin_dir / name).symlink_to(sys.executable)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, (
        f"the README block failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    )
    return done.stdout


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    # a quick demo model, so that the replies take a fraction of a second
    models = demo_models_file(tmp_path_factory.mktemp("models"))
    with run_server({"SANIC_CHAT_MODELS": models}) as running:
        yield running


def sse_events(output: str) -> list[dict[str, Any]]:
    return [
        json.loads(line.removeprefix("data:").strip())
        for line in output.splitlines()
        if line.startswith("data:")
    ]


def test_readme_sse_walkthrough_shows_a_whole_reply(server: RunningServer, tmp_path: Path) -> None:
    output = run_block(block_with("/events"), server, tmp_path)
    events = sse_events(output)
    kinds = [event["type"] for event in events]
    assert kinds and kinds[0] == "generation.started", output
    assert kinds[-1] == "generation.completed", output
    text = ""
    for event in events:
        if event["type"] == "generation.delta":
            assert event["offset"] == len(text), output
            text += event["text"]
    assert text and events[-1]["message"]["content"] == text


def test_readme_websocket_example_shows_a_whole_reply(
    server: RunningServer, tmp_path: Path
) -> None:
    output = run_block(block_with("websockets.connect"), server, tmp_path)
    kinds = [line.split(" ", 1)[0] for line in output.splitlines()]
    assert kinds[:2] == ["message.accepted", "generation.started"], output
    assert "generation.delta" in kinds, output
    assert kinds[-1] == "generation.completed", output
