"""JWT verification on HTTP and on the WebSocket upgrade: every bad token is a
401 ``unauthorized`` JSON answer, before any upgrade."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.server import RunningServer

from .support import (
    SECRET,
    forged,
    jwt_env,
    new_user,
    refused_upgrade,
    serve_jwt,
    server_with,
    token,
    until,
    ws_connect,
)

NOW = int(time.time())


def _get(server: RunningServer, headers: dict[str, str]) -> httpx.Response:
    return httpx.get(f"{server.base_url}/api/v1/conversations", headers=headers)


async def assert_refused(server: RunningServer, headers: dict[str, str]) -> None:
    response = _get(server, headers)
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "unauthorized"
    status, body = await refused_upgrade(server, headers)
    assert status == 401
    assert body["error"]["code"] == "unauthorized"


HS_BAD_TOKENS: dict[str, Any] = {
    "expired": lambda: token(new_user(), exp=NOW - 60),
    "nbf in the future": lambda: token(new_user(), nbf=NOW + 3600),
    "iat in the future": lambda: token(new_user(), iat=NOW + 3600),
    "wrong key": lambda: token(new_user(), secret="another-secret-" + "y" * 40),
    "alg none": lambda: forged(
        {"alg": "none", "typ": "JWT"}, {"sub": "mallory", "exp": NOW + 600}, None
    ),
    "alg none, signed anyway": lambda: forged(
        {"alg": "none", "typ": "JWT"}, {"sub": "mallory", "exp": NOW + 600}, SECRET.encode()
    ),
    "missing sub": lambda: token(None),
    "empty sub": lambda: token(""),
    "sub with NUL": lambda: token("a\x00b"),
    "sub not a string": lambda: token(12345),  # type: ignore[arg-type]
    "missing exp": lambda: jwt.encode({"sub": "mallory"}, SECRET, algorithm="HS256"),
    "aud it was not meant for": lambda: token(new_user(), aud="another-service"),
    "HS512 with the right secret": lambda: jwt.encode(
        {"sub": "mallory", "exp": NOW + 600}, SECRET, algorithm="HS512"
    ),
    "garbage": lambda: "not.a.jwt",
    "tampered payload": lambda: _tampered(),
}


def _tampered() -> str:
    header, _, signature = token("alice").split(".")
    payload = forged({}, {"sub": "mallory", "exp": NOW + 600}, None).split(".")[1]
    return f"{header}.{payload}.{signature}"


@pytest.mark.parametrize("case", list(HS_BAD_TOKENS))
async def test_a_bad_token_is_refused_on_http_and_on_the_upgrade(
    jwt_server: RunningServer, case: str
) -> None:
    await assert_refused(jwt_server, {"Authorization": f"Bearer {HS_BAD_TOKENS[case]()}"})


@pytest.mark.parametrize("header", ["", "Bearer", "Basic dXNlcjpwYXNz", f"Token {token('alice')}"])
async def test_a_missing_or_malformed_authorization_header_is_refused(
    jwt_server: RunningServer, header: str
) -> None:
    headers = {"Authorization": header} if header else {}
    await assert_refused(jwt_server, headers)


async def test_a_good_token_works_on_http_and_on_the_upgrade(jwt_server: RunningServer) -> None:
    headers = {"Authorization": f"Bearer {token(new_user())}"}
    assert _get(jwt_server, headers).status_code == 200
    async with ws_connect(jwt_server, headers) as ws:
        await ws.send('{"type": "ping"}')
        assert (await until(ws, "pong"))["type"] == "pong"


# --------------------------------------------------------------------------- audience, issuer


@pytest.fixture(scope="module")
def aud_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from serve_jwt(
        tmp_path_factory,
        "aud",
        SANIC_CHAT_JWT_AUDIENCE="sanic-chat",
        SANIC_CHAT_JWT_ISSUER="https://issuer.example",
    )


@pytest.mark.parametrize(
    ("claims", "accepted"),
    [
        ({"aud": "sanic-chat", "iss": "https://issuer.example"}, True),
        ({"aud": ["other", "sanic-chat"], "iss": "https://issuer.example"}, True),
        ({"aud": "other", "iss": "https://issuer.example"}, False),
        ({"iss": "https://issuer.example"}, False),
        ({"aud": "sanic-chat", "iss": "https://evil.example"}, False),
        ({"aud": "sanic-chat"}, False),
    ],
)
async def test_audience_and_issuer_are_checked_when_configured(
    aud_server: RunningServer, claims: dict[str, Any], accepted: bool
) -> None:
    headers = {"Authorization": f"Bearer {token(new_user(), **claims)}"}
    if accepted:
        assert _get(aud_server, headers).status_code == 200
    else:
        await assert_refused(aud_server, headers)


# --------------------------------------------------------------------------- RS256


@pytest.fixture(scope="module")
def rsa_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, bytes, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path = tmp_path_factory.mktemp("rsa") / "public.pem"
    path.write_bytes(public_pem)
    return key, public_pem, path


@pytest.fixture(scope="module")
def rs_server(
    tmp_path_factory: pytest.TempPathFactory, rsa_keys: tuple[Any, bytes, Path]
) -> Iterator[RunningServer]:
    env = jwt_env(tmp_path_factory.mktemp("rs"), SANIC_CHAT_JWT_PUBLIC_KEY=str(rsa_keys[2]))
    env.pop("SANIC_CHAT_JWT_SECRET")
    with server_with(env) as running:
        yield running


async def test_rs256_tokens_signed_with_the_private_key_are_accepted(
    rs_server: RunningServer, rsa_keys: tuple[Any, bytes, Path]
) -> None:
    good = jwt.encode({"sub": new_user(), "exp": NOW + 600}, rsa_keys[0], algorithm="RS256")
    assert _get(rs_server, {"Authorization": f"Bearer {good}"}).status_code == 200
    async with ws_connect(rs_server, {"Authorization": f"Bearer {good}"}) as ws:
        await ws.send('{"type": "ping"}')
        await until(ws, "pong")


async def test_rs256_refuses_algorithm_confusion_and_foreign_keys(
    rs_server: RunningServer, rsa_keys: tuple[Any, bytes, Path]
) -> None:
    _, public_pem, _ = rsa_keys
    claims = {"sub": "mallory", "exp": NOW + 600}
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cases = [
        # the classic: HS256 "signed" with the server's public key as the HMAC secret
        forged({"alg": "HS256", "typ": "JWT"}, claims, public_pem),
        forged({"alg": "HS256", "typ": "JWT"}, claims, public_pem.strip()),
        forged({"alg": "none", "typ": "JWT"}, claims, None),
        jwt.encode(claims, other_key, algorithm="RS256"),
        jwt.encode(claims, SECRET, algorithm="HS256"),
        jwt.encode({"sub": "mallory", "exp": NOW - 60}, rsa_keys[0], algorithm="RS256"),
    ]
    for bad in cases:
        await assert_refused(rs_server, {"Authorization": f"Bearer {bad}"})
