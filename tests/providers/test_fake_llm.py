"""The fake LLM server itself: directives, stats, HTTP/1.1 behaviour."""

from __future__ import annotations

import argparse
import asyncio

import httpx
import orjson
import pytest

from sanic_chat.testing.fake_llm import (
    DirectiveError,
    FakeLLM,
    FakeOptions,
    Fault,
    add_arguments,
    reply_text,
    serve_fake_llm,
)


def test_directives_override_defaults_and_reject_unknown_names() -> None:
    options = FakeOptions().with_directives(
        " ttft_ms=0; tps=100 ;tokens=5;fault=stall:2.5;at=3;key=k1;fail_first=2;retry_after=0.5"
    )
    assert (options.ttft_ms, options.tps, options.tokens) == (0.0, 100.0, 5)
    assert options.fault == Fault("stall", 2.5) and options.at == 3
    assert (options.key, options.fail_first, options.retry_after) == ("k1", 2, 0.5)
    assert options.bucket == "k1"
    assert FakeOptions(fault=Fault("status", 503)).bucket == "status:503"
    assert FakeOptions().with_directives("reply_tokens=3;tokens_per_second=0").tokens == 3
    for bad in ("colour=red", "tokens=many", "fault=explode:1", "fault=status:200", "tokens"):
        with pytest.raises(DirectiveError):
            FakeOptions().with_directives(bad)


async def test_magic_text_in_the_last_user_message_beats_the_header(
    fake: FakeLLM, key: str
) -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": f"hello [fake-llm: tokens=3; key={key}]"}],
        "stream": False,
    }
    async with httpx.AsyncClient() as client:
        answer = await client.post(
            fake.base_url + "/v1/chat/completions", json=body, headers={"X-Fake-LLM": "tokens=6"}
        )
    assert answer.status_code == 200
    # the directive is not part of the prompt the reply is made from
    assert answer.json()["choices"][0]["message"]["content"] == reply_text("hello", 3)
    assert fake.stats()["attempts"][key] == 1


async def test_a_bad_directive_is_answered_400_in_the_vendor_format(fake: FakeLLM) -> None:
    async with httpx.AsyncClient() as client:
        answer = await client.post(
            fake.base_url + "/v1/messages",
            json={"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
            headers={"X-Fake-LLM": "fault=boom"},
        )
    assert answer.status_code == 400
    assert answer.json()["type"] == "error"
    assert "unknown fault 'boom'" in answer.json()["error"]["message"]


async def test_status_fault_uses_each_vendors_error_body_and_retry_after(fake: FakeLLM) -> None:
    headers = {"X-Fake-LLM": "fault=status:429;retry_after=3"}
    message = {"role": "user", "content": "x"}
    async with httpx.AsyncClient(base_url=fake.base_url, headers=headers) as client:
        openai = await client.post("/v1/chat/completions", json={"messages": [message]})
        claude = await client.post("/v1/messages", json={"messages": [message]})
        ollama = await client.post("/api/chat", json={"messages": [message]})
    assert {openai.status_code, claude.status_code, ollama.status_code} == {429}
    assert openai.headers["retry-after"] == "3"
    assert openai.json()["error"]["type"] == "requests"
    assert claude.json()["error"]["type"] == "rate_limit_error"
    assert "injected status 429" in ollama.json()["error"]


async def test_one_keep_alive_connection_carries_many_requests(fake: FakeLLM, key: str) -> None:
    async with httpx.AsyncClient(
        base_url=fake.base_url, limits=httpx.Limits(max_connections=1)
    ) as client:
        for _ in range(5):
            answer = await client.post(
                "/api/chat",
                json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                headers={"X-Fake-LLM": f"key={key}"},
            )
            lines = [orjson.loads(line) for line in answer.text.splitlines()]
            assert lines[-1]["done"] is True
    assert fake.stats()["attempts"][key] == 5


async def test_unknown_paths_and_methods_and_garbage(fake: FakeLLM) -> None:
    async with httpx.AsyncClient(base_url=fake.base_url) as client:
        assert (await client.get("/nope")).status_code == 404
        assert (await client.get("/v1/messages")).status_code == 405
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.post("/api/chat", content=b"{not json")).status_code == 400
        assert (await client.post("/api/chat", json={"messages": "x"})).status_code == 400
    reader, writer = await asyncio.open_connection(*fake.base_url[7:].split(":"))
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    status = await reader.readline()
    writer.close()
    assert status.startswith(b"HTTP/1.1 400")


async def test_serve_in_the_running_loop_with_stats_and_reset() -> None:
    server = await serve_fake_llm(ttft_ms=0, tps=0, tokens=2)
    try:
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            body = {"messages": [{"role": "user", "content": "x"}], "stream": True}
            answer = await client.post("/v1/chat/completions", json=body)
            assert answer.text.endswith("data: [DONE]\n\n")
            stats = (await client.get("/_fake/stats")).json()
            assert stats["requests"] == 1 and stats["streams_completed"] == 1
            assert stats["last_request"]["body"] == body
            assert (await client.post("/_fake/reset")).status_code == 200
            assert (await client.get("/_fake/stats")).json()["requests"] == 0
    finally:
        await server.close()


async def test_hundreds_of_paced_streams_at_once(fake: FakeLLM, key: str) -> None:
    async def one(client: httpx.AsyncClient, i: int) -> str:
        body = {"messages": [{"role": "user", "content": f"p{i}"}]}
        answer = await client.post(
            "/api/chat", json=body, headers={"X-Fake-LLM": f"key={key};tps=50;tokens=10;ttft_ms=50"}
        )
        return "".join(
            orjson.loads(line)["message"]["content"] for line in answer.text.splitlines()
        )

    limits = httpx.Limits(max_connections=500)
    async with httpx.AsyncClient(base_url=fake.base_url, limits=limits, timeout=10) as client:
        texts = await asyncio.gather(*(one(client, i) for i in range(200)))
    assert texts == [reply_text(f"p{i}", 10) for i in range(200)]
    assert fake.stats()["attempts"][key] == 200


def test_cli_arguments_map_to_options() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--port", "9100", "--ttft-ms", "10", "--tokens-per-second", "0", "--fault", "status:503"]
    )
    assert (args.port, args.ttft_ms, args.tokens_per_second, args.fault) == (
        9100,
        10.0,
        0.0,
        "status:503",
    )
    assert args.host == "127.0.0.1" and args.reply_tokens == 40
