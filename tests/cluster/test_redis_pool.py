"""One pool of Redis connections per process, shared by the bus's tail reads, the ticket
store and the rate limiters, that waits for a free connection instead of failing
(issue 17 item 5): a burst right after a start is served, not refused with 503, and a
busy pool is never logged as an unreachable Redis."""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path

import httpx
import pytest

from sanic_chat.config import Settings
from sanic_chat.security.identity import TicketPaths
from sanic_chat.wiring import security_for, shared_redis_for
from tests.conftest import require_redis
from tests.security.support import SECRET, bearer, jwt_env, new_user, server_with

pytestmark = pytest.mark.redis

BURST = 300


async def test_300_ticket_posts_right_after_a_start_are_all_served(tmp_path: Path) -> None:
    env = jwt_env(
        tmp_path,
        SANIC_CHAT_BUS_URL=require_redis(),
        SANIC_CHAT_BUS_PREFIX=f"sanic-chat-test:pool:{uuid.uuid4().hex[:12]}",
    )
    with server_with(env) as server:
        limits = httpx.Limits(max_connections=BURST, max_keepalive_connections=BURST)
        async with httpx.AsyncClient(timeout=30.0, limits=limits) as client:
            headers = [bearer(new_user()) for _ in range(BURST)]
            responses = await asyncio.gather(
                *(client.post(f"{server.base_url}/api/v1/tickets", headers=h) for h in headers)
            )
        log = server.log()
    statuses = [response.status_code for response in responses]
    assert statuses == [201] * BURST, {s: statuses.count(s) for s in set(statuses)}
    assert "Too many connections" not in log


async def test_a_rate_limiter_under_a_burst_never_reports_a_healthy_redis_unreachable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings.from_env(
        {
            "SANIC_CHAT_AUTH": "jwt",
            "SANIC_CHAT_JWT_SECRET": SECRET,
            "SANIC_CHAT_BUS_URL": require_redis(),
            "SANIC_CHAT_BUS_PREFIX": f"sanic-chat-test:pool:{uuid.uuid4().hex[:12]}",
            "SANIC_CHAT_FRAME_RATE_LIMIT": "100000/minute",
        }
    )
    redis = shared_redis_for(settings)  # wired as the app wires it
    security = security_for(settings, redis, TicketPaths())
    limiter = security.frame_rate
    assert limiter is not None
    await limiter.start()
    try:
        with caplog.at_level(logging.WARNING, logger="sanic_chat.security.ratelimit"):
            waits = await asyncio.gather(*(limiter.acquire(f"u{i % 7}") for i in range(BURST)))
    finally:
        await limiter.close()
        if redis is not None:
            await redis.close()
    assert waits == [0.0] * BURST
    assert not [r for r in caplog.records if "unreachable" in r.getMessage()]
