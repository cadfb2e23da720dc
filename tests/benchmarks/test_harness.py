"""The benchmark harness measures what it claims: a few seconds of real load
against a real server (zero loss, every acknowledged message in the database),
the floor relays a fake-LLM stream frame for frame, and the offset accounting
catches gaps and overlaps."""

from __future__ import annotations

import asyncio
import importlib.util
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from benchmarks.frames import ReplyTracker
from benchmarks.load import LoadConfig, run_load, write_outputs
from sanic_chat.testing.fake_llm import FakeLLM, reply_text
from tests.server import free_port, launch, run_server, wait_ready

ROOT = Path(__file__).resolve().parents[2]
FAST_DEMO = """
default = "demo"
[models.demo]
provider = "demo"
ttft_ms = 50
tokens_per_second = 200
reply_tokens = 30
"""


# --------------------------------------------------------------------------- offsets


def _delta(gid: str, offset: int, text: str) -> dict[str, object]:
    return {"type": "generation.delta", "generation_id": gid, "offset": offset, "text": text}


def _completed(gid: str, content: str) -> dict[str, object]:
    return {"type": "generation.completed", "generation_id": gid, "message": {"content": content}}


def test_tracker_counts_code_points_and_finds_no_loss_in_a_clean_stream() -> None:
    tracker = ReplyTracker("c1", 0.0)
    tracker.accepted({"id": "m1", "conversation_id": "k"}, "g1", 0.01)
    assert not tracker.feed(_delta("g1", 0, "🚀 a"), 0.2)
    assert not tracker.feed(_delta("g1", 3, "bc"), 0.3)
    assert tracker.feed(_completed("g1", "🚀 abc"), 0.4)
    result = tracker.result(user=0, transport="ws", slow=False, run_start=0.0)
    assert (result.outcome, result.chars, result.gaps, result.overlaps) == ("completed", 5, 0, 0)
    assert not result.mismatch
    assert (result.accepted_ms, result.first_ms, result.done_ms) == (10.0, 200.0, 400.0)


def test_tracker_reports_gaps_overlaps_and_ignores_other_generations() -> None:
    tracker = ReplyTracker("c1", 0.0, stale={"old"})
    tracker.accepted({"id": "m1"}, "g1", 0.0)
    tracker.feed(_delta("old", 0, "zzz"), 0.1)  # an earlier reply: not ours
    tracker.feed(_delta("g1", 0, "abc"), 0.1)
    tracker.feed(_delta("g1", 1, "bcd"), 0.2)  # "bc" again
    tracker.feed(_delta("g1", 6, "g"), 0.3)  # "ef" never came
    tracker.feed(_completed("g1", "abcdefg"), 0.4)
    assert (tracker.overlaps, tracker.duplicated_chars) == (1, 2)
    assert (tracker.gaps, tracker.lost_chars) == (1, 2)
    assert tracker.mismatch


# --------------------------------------------------------------------------- load


def test_load_generator_against_a_real_server_loses_nothing(tmp_path: Path) -> None:
    models = tmp_path / "models.toml"
    models.write_text(FAST_DEMO)
    with run_server({"SANIC_CHAT_MODELS": str(models)}) as server:
        config = LoadConfig(
            url=server.base_url,
            users=3,
            spawn_rate=30,
            duration=2.5,
            think_time=0.3,
            transport="mix",
            ws_share=0.67,
            model="demo",
            label="smoke",
            reply_timeout=15,
            progress=False,
        )
        result = run_load(config)
    plots = importlib.util.find_spec("matplotlib") is not None  # the bench extra
    paths = write_outputs(result, tmp_path / "out", plots=plots)
    saved = orjson.loads(paths["json"].read_bytes())
    summary = saved["summary"]
    assert summary["messages"] >= 3
    assert summary["completed"] == summary["messages"], summary["outcomes"]
    assert set(summary["by_transport"]) == {"ws", "sse"}
    assert summary["loss"] == {
        "gaps": 0,
        "lost_chars": 0,
        "overlaps": 0,
        "duplicated_chars": 0,
        "content_mismatches": 0,
    }
    assert saved["connections"]["drops"] == 0
    assert saved["connections"]["connect_errors"] == 0
    db = saved["db_check"]
    assert db["acknowledged"] == summary["messages"]
    assert db["found"] == db["acknowledged"] and db["missing"] == 0
    assert db["reply_mismatches"] == 0
    assert summary["ttfc_ms"]["p99"] is not None and summary["persist_ms"]["p50"] is not None
    if plots:
        assert paths["latency"].stat().st_size > 0 and paths["ttfc"].stat().st_size > 0
    assert "first chunk" in paths["md"].read_text()


# --------------------------------------------------------------------------- floor


@pytest.fixture
def floor_url(tmp_path: Path) -> Iterator[tuple[str, FakeLLM]]:
    with FakeLLM(ttft_ms=0, tps=0, tokens=20) as fake:
        port = free_port()
        log = tmp_path / "floor.log"
        argv = ("-m", "benchmarks.floor", "--port", str(port), "--upstream", f"{fake.base_url}/v1")
        process = launch(argv, log, cwd=ROOT)
        try:
            wait_ready(f"http://127.0.0.1:{port}/healthz", process, log)
            yield f"http://127.0.0.1:{port}", fake
        finally:
            process.terminate()
            process.wait(10)


def test_floor_relays_the_upstream_stream_over_websocket_frames(
    floor_url: tuple[str, FakeLLM],
) -> None:
    url, _ = floor_url
    prompt = "relay this please"

    async def exchange() -> list[dict[str, object]]:
        frames: list[dict[str, object]] = []
        async with connect(url.replace("http", "ws") + "/ws") as ws:
            create = {"type": "message.create", "client_id": str(uuid.uuid4()), "content": prompt}
            await ws.send(orjson.dumps(create).decode())
            async with asyncio.timeout(10):
                while True:
                    frame = orjson.loads(await ws.recv())
                    frames.append(frame)
                    if frame["type"] == "generation.completed":
                        return frames

    frames = asyncio.run(exchange())
    kinds = [f["type"] for f in frames]
    assert kinds[:2] == ["message.accepted", "generation.started"]
    deltas = [f for f in frames if f["type"] == "generation.delta"]
    text = ""
    for delta in deltas:
        assert delta["offset"] == len(text)  # code points, contiguous
        text += str(delta["text"])
    assert len(deltas) == 20
    assert text == reply_text(prompt, 20)
    assert frames[-1]["message"]["content"] == text  # type: ignore[index]


def test_floor_serves_the_sse_flow_the_load_generator_uses(
    floor_url: tuple[str, FakeLLM],
) -> None:
    url, _ = floor_url
    result = run_load(
        LoadConfig(
            url=url,
            users=2,
            duration=0.5,
            think_time=0.1,
            transport="mix",
            max_messages=1,
            check_db=False,
            progress=False,
            reply_timeout=10,
        )
    )
    summary = result["summary"]
    assert summary["messages"] == summary["completed"] == 2
    assert set(summary["by_transport"]) == {"ws", "sse"}
    assert summary["loss"]["gaps"] == summary["loss"]["overlaps"] == 0
    assert summary["loss"]["content_mismatches"] == 0
    assert httpx.get(f"{url}/healthz").status_code == 200


# --------------------------------------------------------------------------- capacity search


def test_capacity_search_steps_up_then_halves_between_pass_and_failure() -> None:
    from benchmarks.run import _Search

    search = _Search([100, 200, 300, 400])
    tried = []
    limit = 260  # the "server" passes up to 260 users
    while (users := search.next()) is not None:
        tried.append(users)
        search.record(users, users <= limit)
    assert tried == [100, 200, 300, 250]
    assert (search.passed, search.failed) == (250, 300)


def test_a_target_that_passed_every_step_is_reported_as_at_least_that_many() -> None:
    from benchmarks.run import _best

    best = {"sanic-chat": 1000, "floor": 450}
    assert _best(best, "sanic-chat", {"sanic-chat"}) == "1000 or more"
    assert _best(best, "floor", {"sanic-chat"}) == "450"
    assert _best({"sanic-chat": 1000}, "floor", set()) == "-"


def test_several_server_workers_share_the_redis_bus_and_the_report_says_so(
    tmp_path: Path,
) -> None:
    from benchmarks.run import Bench, _workers_note, parse_args

    one = parse_args(["--scenario", "capacity"])
    two = parse_args(["--scenario", "capacity", "--server-workers", "2"])
    assert _workers_note(one) == ""
    assert "2 worker processes sharing the Redis bus" in _workers_note(two)
    for args, bus in ((one, None), (two, "redis://127.0.0.1:6379/15")):
        bench = Bench(args, tmp_path)
        try:
            bench.fake = SimpleNamespace(url="http://127.0.0.1:9")  # type: ignore[assignment]
            env = bench.server_env(users=2)
        finally:
            bench.sampler.stop()
        assert env.get("SANIC_CHAT_BUS_URL") == bus
