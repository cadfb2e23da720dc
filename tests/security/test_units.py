"""The security pieces on their own: limiters, tickets, origins, redaction,
the frame gate, and start-up refusals of unsafe configuration."""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sanic_chat.config import ConfigError, RateLimit, Settings
from sanic_chat.core.errors import RateLimited
from sanic_chat.core.events import (
    ConversationSubscribe,
    ConversationUnsubscribe,
    GenerationCancel,
    GenerationResume,
    MessageCreate,
    Ping,
)
from sanic_chat.security.limits import ConnectionLimiter, build_gate
from sanic_chat.security.origins import OriginPolicy, OriginRefused, parse_origin
from sanic_chat.security.ratelimit import LocalRateLimiter, RedisRateLimiter
from sanic_chat.security.redaction import RedactSecrets, redact
from sanic_chat.security.tickets import MemoryTickets

# --------------------------------------------------------------------------- rate


def test_the_local_limiter_allows_a_burst_then_one_per_interval() -> None:
    limiter = LocalRateLimiter(3, 60.0)
    assert [limiter.take("u", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("u", 0.0) == pytest.approx(20.0)
    assert limiter.take("other", 0.0) == 0.0
    assert limiter.take("u", 19.9) > 0
    assert limiter.take("u", 20.0) == 0.0
    assert limiter.take("u", 20.0) > 0
    assert [limiter.take("u", 200.0) for _ in range(4)][-1] > 0  # never more than the burst


async def test_the_redis_limiter_falls_back_to_a_local_limit_when_redis_is_down() -> None:
    limiter = RedisRateLimiter("redis://127.0.0.1:1/0", 2, 60.0)
    await limiter.start()
    try:
        waits = [await limiter.acquire("u") for _ in range(3)]
    finally:
        await limiter.close()
    assert waits[:2] == [0.0, 0.0] and waits[2] > 0


# --------------------------------------------------------------------------- tickets


async def test_a_memory_ticket_is_good_once_for_its_user() -> None:
    tickets = MemoryTickets(ttl_s=60)
    ticket = await tickets.mint("alice")
    assert await tickets.redeem(ticket.value) == "alice"
    assert await tickets.redeem(ticket.value) is None
    assert await tickets.redeem("A" * 43) is None
    assert await tickets.redeem("not a ticket!") is None


async def test_a_memory_ticket_expires() -> None:
    tickets = MemoryTickets(ttl_s=0.05)
    ticket = await tickets.mint("alice")
    await asyncio.sleep(0.1)
    assert await tickets.redeem(ticket.value) is None
    await tickets.mint("bob")  # sweeps the expired one
    assert len(tickets._tickets) == 1


async def test_memory_tickets_are_capped_per_user() -> None:
    tickets = MemoryTickets(ttl_s=60, max_per_window=3)
    for _ in range(3):
        await tickets.mint("alice")
    with pytest.raises(RateLimited) as refused:
        await tickets.mint("alice")
    assert 0 < refused.value.retry_after <= 60
    await tickets.mint("bob")


# --------------------------------------------------------------------------- connections


def test_connection_slots_are_reserved_used_and_freed() -> None:
    limiter = ConnectionLimiter(2)
    limiter.reserve("u")
    limiter.connected("u")
    limiter.reserve("u")
    with pytest.raises(RateLimited):
        limiter.reserve("u")  # one open, one reserved
    limiter.connected("u")
    assert limiter.active("u") == 2
    limiter.disconnected("u")
    limiter.reserve("u")
    limiter.reserve("other")


def test_a_reservation_that_never_connects_lapses() -> None:
    limiter = ConnectionLimiter(1, reservation_s=0.0)
    limiter.reserve("u")  # e.g. a handshake that failed
    limiter.reserve("u")  # the lapsed one does not count


# --------------------------------------------------------------------------- origins


@pytest.mark.parametrize(
    ("origin", "parsed"),
    [
        ("https://a.example", ("https", "a.example", 443)),
        ("http://A.Example:8080", ("http", "a.example", 8080)),
        ("http://[::1]:8000", ("http", "::1", 8000)),
        ("null", None),
        ("file://", None),
        ("https://user@a.example", None),
        ("https://a.example/path", None),
        ("https://a.example:99999", None),
        ("javascript:alert(1)", None),
    ],
)
def test_origins_parse_strictly(origin: str, parsed: tuple[str, str, int] | None) -> None:
    assert parse_origin(origin) == parsed


def test_same_origin_compares_host_and_port_with_default_ports() -> None:
    policy = OriginPolicy((), check_host=False)
    policy.check("http://chat.example", "chat.example")
    policy.check("https://chat.example", "chat.example")
    policy.check("http://chat.example:8000", "chat.example:8000")
    policy.check(None, "anything")
    for origin, host in (
        ("http://chat.example:8000", "chat.example"),
        ("http://chat.example", "chat.example:8000"),
        ("http://evil.example", "chat.example"),
        ("http://chat.example", None),
    ):
        with pytest.raises(OriginRefused):
            policy.check(origin, host)


def test_without_auth_only_loopback_ip_and_listed_hosts_are_served() -> None:
    policy = OriginPolicy(("https://chat.lan",), check_host=True)
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000", "192.168.1.5:8000", "chat.lan"):
        policy.check(None, host)
    with pytest.raises(OriginRefused):
        policy.check(None, "evil.example:8000")


# --------------------------------------------------------------------------- redaction


def test_secrets_are_redacted() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    line = f"GET /ws?ticket=abc123&x=1 Authorization: Bearer {jwt} token={jwt} api_key=sk-1"
    cleaned = redact(line)
    for secret in ("abc123", jwt, "sk-1"):
        assert secret not in cleaned
    assert "x=1" in cleaned


def test_the_filter_rewrites_sanic_access_records() -> None:
    record = logging.LogRecord("sanic.access", logging.INFO, "", 0, "", None, None)
    record.request = "GET ws://h/ws?ticket=SECRETVALUE"
    RedactSecrets().filter(record)
    assert record.request == "GET ws://h/ws?ticket=[redacted]"


# --------------------------------------------------------------------------- the gate


async def test_the_gate_spends_the_rate_only_on_messages() -> None:
    # NUL is the decoder's to refuse (tests/core/test_decoder.py), not the gate's
    gate = build_gate(LocalRateLimiter(1, 60.0))
    create = MessageCreate(client_id=str(uuid.uuid4()), content="hi")
    for _ in range(5):
        await gate("u", Ping())
    await gate("u", create)
    with pytest.raises(RateLimited) as refused:
        await gate("u", create)
    assert refused.value.ref == create.client_id and refused.value.retry_after > 0


async def test_reading_frames_pay_the_frame_rate_and_cheap_ones_are_free() -> None:
    gate = build_gate(LocalRateLimiter(1, 60.0), frame_rate=LocalRateLimiter(2, 60.0))
    conversation, generation = str(uuid.uuid4()), str(uuid.uuid4())
    await gate("u", GenerationResume(generation_id=generation, offset=0))
    await gate("u", ConversationSubscribe(conversation_id=conversation))
    with pytest.raises(RateLimited) as refused:
        await gate("u", GenerationCancel(generation_id=generation))
    assert refused.value.retry_after > 0 and "generation.cancel" in refused.value.message
    for _ in range(5):  # nothing to read: never limited
        await gate("u", Ping())
        await gate("u", ConversationUnsubscribe(conversation_id=conversation))
    # the message rate is a bucket of its own, and so is every other user's
    await gate("u", MessageCreate(client_id=str(uuid.uuid4()), content="hi"))
    await gate("v", GenerationResume(generation_id=generation, offset=0))


def test_the_frame_rate_defaults_with_jwt_and_can_be_set_or_switched_off(tmp_path: Path) -> None:
    base = {"SANIC_CHAT_DATA_DIR": str(tmp_path)}
    jwt = {**base, "SANIC_CHAT_AUTH": "jwt", "SANIC_CHAT_JWT_SECRET": "s" * 32}
    assert Settings.from_env(base).frame_rate_limit is None
    assert Settings.from_env(jwt).frame_rate_limit == RateLimit(600, 60.0)
    assert Settings.from_env(
        {**jwt, "SANIC_CHAT_FRAME_RATE_LIMIT": "5/second"}
    ).frame_rate_limit == RateLimit(5, 1.0)
    assert Settings.from_env({**jwt, "SANIC_CHAT_FRAME_RATE_LIMIT": "off"}).frame_rate_limit is None
    with pytest.raises(ConfigError, match="SANIC_CHAT_FRAME_RATE_LIMIT"):
        Settings.from_env({**jwt, "SANIC_CHAT_FRAME_RATE_LIMIT": "lots"})


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"SANIC_CHAT_AUTH": "jwt", "SANIC_CHAT_JWT_SECRET": "short"}, "at least 32"),
        ({"SANIC_CHAT_AUTH": "jwt"}, "needs SANIC_CHAT_JWT_SECRET"),
        ({"SANIC_CHAT_ALLOWED_ORIGINS": "*"}, "any web page"),
        ({"SANIC_CHAT_ALLOWED_ORIGINS": "chat.example.com"}, "not an origin"),
        ({"SANIC_CHAT_ALLOWED_ORIGINS": "https://a.example/path"}, "not an origin"),
    ],
)
def test_unsafe_or_wrong_settings_fail_at_start(
    tmp_path: Path, env: dict[str, str], words: str
) -> None:
    with pytest.raises(ConfigError, match=words):
        Settings.from_env({"SANIC_CHAT_DATA_DIR": str(tmp_path), **env})


def test_the_jwt_secret_never_shows_in_a_repr(tmp_path: Path) -> None:
    secret = "s3cr3t-" + "k" * 40
    settings = Settings.from_env(
        {
            "SANIC_CHAT_DATA_DIR": str(tmp_path),
            "SANIC_CHAT_AUTH": "jwt",
            "SANIC_CHAT_JWT_SECRET": secret,
        }
    )
    assert secret not in repr(settings)


@pytest.mark.parametrize("kind", ["private", "ec", "garbage"])
def test_a_wrong_public_key_fails_at_start(tmp_path: Path, kind: str) -> None:
    from sanic_chat.security.identity import TokenVerifier

    path = tmp_path / "key.pem"
    if kind == "private":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    elif kind == "ec":
        path.write_bytes(
            ec.generate_private_key(ec.SECP256R1())
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    else:
        path.write_text("not a key")
    settings = Settings.from_env(
        {
            "SANIC_CHAT_DATA_DIR": str(tmp_path),
            "SANIC_CHAT_AUTH": "jwt",
            "SANIC_CHAT_JWT_PUBLIC_KEY": str(path),
        }
    )
    with pytest.raises(ConfigError):
        TokenVerifier(settings)


class _Request:
    def __init__(self, method: str, path: str) -> None:
        self.method, self.path = method, path


def test_tickets_are_accepted_on_the_transports_own_paths_only() -> None:
    from sanic_chat.security.identity import TicketPaths
    from sanic_chat.transports import sse, websocket

    both = TicketPaths([*websocket.TICKET_PATHS, *sse.TICKET_PATHS])
    ws_only = TicketPaths(websocket.TICKET_PATHS)
    gid = str(uuid.uuid4())
    streams = [f"/api/v1/conversations/{gid}/events", f"/api/v1/generations/{gid}/events"]
    for path in ["/ws", *streams]:
        assert both.accepts(_Request("GET", path)), path
        assert not both.accepts(_Request("POST", path)), path
    # a transport that is off lends its paths to no one
    assert ws_only.accepts(_Request("GET", "/ws"))
    assert not any(ws_only.accepts(_Request("GET", path)) for path in streams)
    for path in [
        "/ws/x",
        "/wss",
        f"/api/v1/conversations/{gid}/messages",
        f"/api/v1/conversations/{gid}/x/events",
        "/api/v1/conversations//events",
        "/api/v1/tickets",
    ]:
        assert not both.accepts(_Request("GET", path)), path
    assert not TicketPaths().accepts(_Request("GET", "/ws"))
