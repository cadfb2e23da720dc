"""The whole server with real provider clients streaming from the fake LLM over
loopback: each vendor format end to end, and a provider failure mid-reply."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets

from sanic_chat.testing.fake_llm import FakeLLM
from tests.server import RunningServer, database_env, run_server

from .wire import create, joined_text, until_terminal


@pytest.fixture(scope="module")
def fake_llm() -> Iterator[FakeLLM]:
    with FakeLLM(ttft_ms=20, tokens_per_second=200, reply_tokens=12) as fake:
        yield fake


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(
    request: pytest.FixtureRequest, fake_llm: FakeLLM, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    models = tmp_path_factory.mktemp("models") / "models.toml"
    base = fake_llm.base_url
    models.write_text(
        f"""
default = "gpt"
[models.gpt]
provider = "openai"
base_url = "{base}/v1"
model = "fake-gpt"
[models.claude]
provider = "anthropic"
base_url = "{base}"
model = "fake-claude"
max_tokens = 256
[models.llama]
provider = "ollama"
base_url = "{base}"
model = "fake-llama"
"""
    )
    env = {**database_env(request.param), "SANIC_CHAT_MODELS": str(models)}
    with run_server(env) as running:
        yield running


async def chat(server: RunningServer, content: str, model: str) -> list[dict[str, Any]]:
    async with websockets.connect(server.ws_url) as ws:
        await ws.send(json.dumps(create(content, model=model)))
        return await until_terminal(ws, timeout=15)


@pytest.mark.parametrize("model", ["gpt", "claude", "llama"])
async def test_each_vendor_format_streams_a_complete_stored_reply(
    server: RunningServer, model: str
) -> None:
    frames = await chat(server, f"hello {model}", model)
    completed = frames[-1]
    assert completed["type"] == "generation.completed", completed
    text = joined_text(frames)
    assert text and completed["message"]["content"] == text
    assert completed["usage"]["output_tokens"] == 12
    assert completed["usage"]["input_tokens"] is not None
    assert completed["message"]["model"] == model
    rows = httpx.get(
        f"{server.base_url}/api/v1/conversations/{frames[0]['conversation_id']}/messages"
    ).json()["items"]
    assert rows[-1]["content"] == text and rows[-1]["status"] == "complete"


async def test_a_cut_mid_stream_fails_the_reply_and_keeps_the_partial_text(
    server: RunningServer,
) -> None:
    frames = await chat(server, "tell me [fake-llm: fault=cut:4]", "gpt")
    failed = frames[-1]
    assert failed["type"] == "generation.failed"
    assert failed["error"]["code"] == "provider_error"
    text = joined_text(frames)
    assert text and failed["message"]["content"] == text
    assert failed["message"]["status"] == "failed"
    rows = httpx.get(
        f"{server.base_url}/api/v1/conversations/{frames[0]['conversation_id']}/messages"
    ).json()["items"]
    assert rows[-1]["status"] == "failed" and rows[-1]["content"] == text


@pytest.mark.parametrize(
    ("fault", "code"),
    [("status:401", "provider_unauthorized"), ("status:429", "provider_rate_limited")],
)
async def test_upstream_refusals_end_in_a_stable_error_code(
    server: RunningServer, fault: str, code: str
) -> None:
    frames = await chat(server, f"x [fake-llm: fault={fault}; retry_after=0]", "claude")
    assert frames[-1]["type"] == "generation.failed"
    assert frames[-1]["error"]["code"] == code
    assert frames[-1]["message"]["content"] == ""
