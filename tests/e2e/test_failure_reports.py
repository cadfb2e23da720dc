"""Operators see what users see: every reply that ends in ``generation.failed``
is logged once, at WARNING, with the model (its name in the models file and
the upstream's own id), the provider, the upstream's host, the HTTP status
when there was one, the error code and the reply's id -- and never a key, a
header's secret, a password in the base URL, or what the user wrote. The
user's message names the model the user picked, not a vendor.

A real server streams from the fake LLM on loopback (each failure set by the
model's own ``X-Fake-LLM`` header, as a gateway header would be) and from a
closed port; the assertions read the server's own log."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import websockets

from sanic_chat.testing.fake_llm import FakeLLM
from tests.server import RunningServer, free_port, run_server

FAKE_KEY = "sk-test-" + uuid.uuid4().hex  # must never reach the log
GATEWAY_SECRET = "gw-" + uuid.uuid4().hex  # an extra header's value: a secret too
URL_PASSWORD = "pw" + uuid.uuid4().hex[:10]  # in a base URL's user info
VENDORS = ("openai", "anthropic", "ollama")
LINE = re.compile(
    r"^\S+ \S+ WARNING sanic_chat\.core\.generation: generation\.failed "
    r"reply=(?P<reply>\S+) conversation=(?P<conversation>\S+) model=(?P<model>\S+) "
    r"upstream_model=(?P<upstream_model>\S+) provider=(?P<provider>\S+) host=(?P<host>\S+) "
    r"status=(?P<status>\S+) code=(?P<code>\S+): (?P<message>.*)$"
)


@dataclass(frozen=True)
class Case:
    name: str  # the model's name in the models file
    vendor: str
    directives: str  # the fake's fault for this model ("" for the closed port)
    code: str
    status: str  # what the log says: the upstream's status, or "-"
    message: str  # the user's message, exactly, or its start when it ends with "…"

    @property
    def refused(self) -> bool:
        return not self.directives


def cases() -> list[Case]:
    made = []
    for v in VENDORS:
        refused = "local-llama" if v == "openai" else f"{v}-refused"
        made += [
            Case(
                f"{v}-503",
                v,
                "fault=status:503",
                "provider_error",
                "503",
                f"the model '{v}-503' answered 503…",
            ),
            Case(
                f"{v}-401",
                v,
                "fault=status:401",
                "provider_unauthorized",
                "401",
                f"the model '{v}-401' rejected the API key (401…",
            ),
            Case(
                f"{v}-429",
                v,
                "fault=status:429;retry_after=30",
                "provider_rate_limited",
                "429",
                f"the model '{v}-429' answered 429…",
            ),
            Case(
                refused,
                v,
                "",
                "provider_error",
                "-",
                f"could not connect to the model '{refused}' (connection refused)",
            ),
            Case(
                f"{v}-cut",
                v,
                "fault=cut:3",
                "provider_error",
                "200",
                f"the model '{v}-cut' closed the stream before it finished",
            ),
            Case(
                f"{v}-timeout",
                v,
                "fault=stall:5",
                "provider_timeout",
                "200",
                f"the model '{v}-timeout' sent nothing for 0.5 s",
            ),
            Case(
                f"{v}-error",
                v,
                "fault=error:3",
                "provider_error",
                "200",
                f"the model '{v}-error' sent a stream error…",
            ),
        ]
    return made


CASES = cases()


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeLLM]:
    with FakeLLM(ttft_ms=0, tps=0, tokens=8) as server:
        yield server


@pytest.fixture(scope="module")
def closed_port() -> int:
    return free_port()  # nothing listens there


def _models_toml(fake: FakeLLM, closed_port: int) -> str:
    lines = ['default = "openai-503"']
    for case in CASES:
        if case.refused:
            base = f"http://operator:{URL_PASSWORD}@127.0.0.1:{closed_port}"
        else:
            base = fake.base_url
        if case.vendor == "openai":
            base += "/v1"
        headers = f'"X-Gateway-Token" = "{GATEWAY_SECRET}"'
        if case.directives:
            headers += f', "X-Fake-LLM" = "key={case.name};{case.directives}"'
        lines += [
            f'[models."{case.name}"]',
            f'provider = "{case.vendor}"',
            f'base_url = "{base}"',
            f'model = "fake-{case.vendor}"',
            'api_key_env = "FAILURE_REPORTS_KEY"',
            "headers = { " + headers + " }",
            "stream_timeout_s = 0.5",
            "connect_timeout_s = 2",
            # retried before the first token, and still logged once
            "max_attempts = 2",
            "retry_base_delay_s = 0.01",
            "retry_max_delay_s = 0.02",
        ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def server(
    fake: FakeLLM, closed_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    models = tmp_path_factory.mktemp("failure-reports") / "models.toml"
    models.write_text(_models_toml(fake, closed_port))
    env = {"SANIC_CHAT_MODELS": str(models), "FAILURE_REPORTS_KEY": FAKE_KEY}
    with run_server(env) as running:
        yield running


async def _chat(server: RunningServer, model: str, content: str) -> dict[str, Any]:
    """The terminal event of one message to ``model``."""
    async with websockets.connect(server.ws_url) as ws:
        frame = {
            "type": "message.create",
            "client_id": str(uuid.uuid4()),
            "content": content,
            "model": model,
        }
        await ws.send(json.dumps(frame))
        while True:
            event: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if event["type"].startswith("generation.") and event["type"] in (
                "generation.completed",
                "generation.cancelled",
                "generation.failed",
            ):
                return event
            assert event["type"] != "error", event


def _matches(message: str, expected: str) -> bool:
    if expected.endswith("…"):
        return message.startswith(expected[:-1])
    return message == expected


@pytest.fixture(scope="module")
def outcomes(server: RunningServer) -> dict[str, tuple[dict[str, Any], str]]:
    """Every case's terminal event and what the user wrote, all at once."""
    contents = {case.name: f"private words {uuid.uuid4().hex}" for case in CASES}

    async def all_of_them() -> list[dict[str, Any]]:
        return await asyncio.gather(*(_chat(server, c.name, contents[c.name]) for c in CASES))

    ends = asyncio.run(all_of_them())
    return {case.name: (end, contents[case.name]) for case, end in zip(CASES, ends, strict=True)}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_failed_reply_is_logged_once_with_where_it_failed(
    case: Case,
    outcomes: dict[str, tuple[dict[str, Any], str]],
    server: RunningServer,
    fake: FakeLLM,
    closed_port: int,
) -> None:
    end, content = outcomes[case.name]
    assert end["type"] == "generation.failed", end
    error = end["error"]
    assert error["code"] == case.code
    assert _matches(error["message"], case.message), error["message"]
    # no vendor the operator did not name ("OpenAI" for a local server)
    assert not re.search(r"OpenAI|Anthropic|Ollama", error["message"]), error["message"]

    log = server.log()
    reply = end["generation_id"]
    lines = [line for line in log.splitlines() if f"reply={reply}" in line]
    assert len(lines) == 1, lines
    fields = LINE.match(lines[0])
    assert fields is not None, lines[0]
    port = closed_port if case.refused else int(fake.base_url.rsplit(":", 1)[1])
    assert fields.groupdict() == {
        "reply": reply,
        "conversation": end["message"]["conversation_id"],
        "model": case.name,
        "upstream_model": f"fake-{case.vendor}",
        "provider": case.vendor,
        "host": f"127.0.0.1:{port}",
        "status": case.status,
        "code": case.code,
        "message": error["message"],  # what the user saw
    }
    assert content not in log


def test_no_secret_reaches_the_log(
    outcomes: dict[str, tuple[dict[str, Any], str]], server: RunningServer
) -> None:
    log = server.log()
    assert "generation.failed" in log
    for secret in (FAKE_KEY, GATEWAY_SECRET, URL_PASSWORD, "Bearer", "x-api-key"):
        assert secret not in log, secret


def test_failures_before_the_first_token_were_retried_yet_logged_once(
    outcomes: dict[str, tuple[dict[str, Any], str]], fake: FakeLLM
) -> None:
    attempts = fake.stats()["attempts"]
    for vendor in VENDORS:
        assert attempts[f"{vendor}-503"] == 2, attempts
