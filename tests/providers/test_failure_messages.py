"""What a provider's failure says to the user (the model's name, never a vendor
the operator did not pick) and what it carries for the operator's log (host,
status, upstream model: never the base URL's credentials, path or query).

Over both HTTP stacks (the ``upstream`` fixture: our pool, and httpx's own
upstream, also used when a proxy is configured), against the fake LLM and a
closed loopback port."""

from __future__ import annotations

import errno
import socket

import httpx
import pytest

from sanic_chat.core.errors import ProviderError
from sanic_chat.providers.catalog import ModelCatalog
from sanic_chat.providers.http import connect_failure
from sanic_chat.providers.spec import ModelSpec
from sanic_chat.providers.upstream import TransportFactory
from sanic_chat.redaction import redact_url
from sanic_chat.testing.fake_llm import FakeLLM
from tests.server import free_port

from .conftest import VENDORS, ask, base_url, run


async def _fail(
    catalogs: list[ModelCatalog],
    vendor: str,
    url: str,
    upstream: TransportFactory,
    *,
    name: str = "my-model",
    directives: str = "",
) -> ProviderError:
    spec = ModelSpec(
        name=name,
        provider=vendor,
        model="upstream-id",
        base_url=url,
        api_key="sk-never-shown-" + "k" * 20,
        max_attempts=1,
        stream_timeout_s=0.3,
        headers=(("X-Fake-LLM", directives),) if directives else (),
    )
    catalog = ModelCatalog([spec], name, transports=upstream)
    catalogs.append(catalog)
    outcome = await run(catalog.get(name), ask("hello"))
    assert outcome.error is not None
    return outcome.error


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_a_refused_connection_names_the_model_and_says_refused(
    vendor: str,
    host: str,
    upstream: TransportFactory,
    catalogs: list[ModelCatalog],
) -> None:
    port = free_port()
    error = await _fail(
        catalogs, vendor, f"http://user:hunter2@{host}:{port}/v1?tenant=x", upstream, name="local"
    )
    assert error.message == "could not connect to the model 'local' (connection refused)"
    assert (error.code, error.retryable) == ("provider_error", True)
    assert (error.upstream_host, error.upstream_status, error.upstream_model) == (
        f"{host}:{port}",
        None,
        "upstream-id",
    )


@pytest.mark.parametrize("vendor", VENDORS)
async def test_an_unknown_host_names_the_model(
    vendor: str, upstream: TransportFactory, catalogs: list[ModelCatalog]
) -> None:
    error = await _fail(catalogs, vendor, "http://no-such-host.invalid:8080", upstream)
    assert error.message == "could not connect to the model 'my-model' (host name not found)"
    assert error.upstream_host == "no-such-host.invalid:8080"


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize(
    ("directives", "status", "message"),
    [
        ("fault=status:500", 500, "the model 'my-model' answered 500 ("),
        ("fault=status:403", 403, "the model 'my-model' rejected the API key (403"),
        ("fault=status:404", 404, "the model 'my-model' answered 404 ("),
        ("fault=cut:2", 200, "the model 'my-model' closed the stream before it finished"),
        ("fault=stall:3", 200, "the model 'my-model' sent nothing for 0.3 s"),
        ("fault=malformed:2", 200, "the model 'my-model' sent a malformed stream frame"),
        ("fault=error:2", 200, "the model 'my-model' sent a stream error: "),
    ],
)
async def test_each_upstream_failure_names_the_model_and_carries_its_status(
    vendor: str,
    directives: str,
    status: int,
    message: str,
    fake: FakeLLM,
    upstream: TransportFactory,
    catalogs: list[ModelCatalog],
) -> None:
    error = await _fail(catalogs, vendor, base_url(fake, vendor), upstream, directives=directives)
    assert error.message.startswith(message), error.message
    assert "sk-never-shown" not in error.message
    port = fake.base_url.rsplit(":", 1)[1]
    assert (error.upstream_host, error.upstream_status, error.upstream_model) == (
        f"127.0.0.1:{port}",
        status,
        "upstream-id",
    )


def test_the_host_of_a_base_url_leaves_out_credentials_path_and_query() -> None:
    def host(url: str) -> str:
        return redact_url(url, host_only=True)

    assert host("https://api.openai.com/v1") == "api.openai.com"
    assert host("https://api.openai.com:443/v1") == "api.openai.com"
    assert host("http://me:secret@10.0.0.5:8080/v1?key=abc") == "10.0.0.5:8080"
    assert host("http://[::1]:11434") == "[::1]:11434"
    assert host("http://[::1") == "?"


def test_a_url_in_a_message_loses_its_password_only() -> None:
    assert redact_url("postgresql://u:pw@db:5432/chat") == "postgresql://u:***@db:5432/chat"
    assert redact_url("postgresql://u:p@ss@db/chat") == "postgresql://u:***@db/chat"
    assert redact_url("redis://:pw@cache:6379/0") == "redis://:***@cache:6379/0"
    assert redact_url("postgresql://u@db/chat") == "postgresql://u@db/chat"
    assert redact_url("sqlite:///chat.db") == "sqlite:///chat.db"
    assert redact_url("redis://u:pw@[::1/0") == "<unparsable>"


def test_the_reason_of_a_connect_failure_comes_from_the_os_error_behind_it() -> None:
    def wrapped(cause: BaseException) -> httpx.ConnectError:
        try:
            try:
                raise cause
            except BaseException:
                raise httpx.ConnectError("cannot connect") from None
        except httpx.ConnectError as exc:
            return exc

    assert connect_failure(wrapped(ConnectionRefusedError(111, "refused"))) == "connection refused"
    assert (
        connect_failure(wrapped(OSError(errno.EHOSTUNREACH, "No route to host")))
        == "no route to host"
    )
    # asyncio's error when every address of a name refused
    multiple = OSError(
        "Multiple exceptions: [Errno 111] Connect call failed ('::1', 9), "
        "[Errno 111] Connect call failed ('127.0.0.1', 9)"
    )
    assert connect_failure(wrapped(multiple)) == "connection refused"
    assert connect_failure(httpx.ConnectError("?")) == "unreachable"


@pytest.mark.parametrize("vendor", VENDORS)
async def test_a_connect_timeout_names_the_model_and_the_limit(
    vendor: str, upstream: TransportFactory, catalogs: list[ModelCatalog]
) -> None:
    # a listener that never accepts, its backlog full: the kernel drops further
    # SYNs, so connecting hangs until the limit (on loopback, no network needed)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                fillers.append(filler)
            spec = ModelSpec(
                name="busy",
                provider=vendor,
                model="upstream-id",
                base_url=f"http://127.0.0.1:{port}",
                max_attempts=1,
                connect_timeout_s=0.3,
            )
            catalog = ModelCatalog([spec], "busy", transports=upstream)
            catalogs.append(catalog)
            outcome = await run(catalog.get("busy"), ask("hello"))
        finally:
            for filler in fillers:
                filler.close()
    assert outcome.error is not None
    assert outcome.error.message == (
        "could not connect to the model 'busy' (no connection within 0.3 s)"
    )
    assert (outcome.error.upstream_host, outcome.error.upstream_status) == (
        f"127.0.0.1:{port}",
        None,
    )
