"""The providers' HTTP stack is chosen by the composition root alone: ours by
default, httpx's own with SANIC_CHAT_UPSTREAM_HTTP=httpx, and httpx's own
whenever the environment names a proxy, so replies then go through the proxy
(a real forward proxy on loopback here)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from sanic_chat.app import providers_http
from sanic_chat.config import ConfigError, Settings
from sanic_chat.providers.catalog import ModelCatalog
from sanic_chat.providers.pool import ConnectionPool
from sanic_chat.providers.upstream import httpx_transport, pool_transport
from sanic_chat.testing.fake_llm import FakeLLM, reply_text

from .conftest import VENDORS, ask, run, spec_for

_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


class ForwardProxy:
    """An HTTP forward proxy: reads a request in absolute form, sends it on in
    origin form to the host it names, then relays bytes both ways."""

    def __init__(self) -> None:
        self.requests: list[str] = []  # "METHOD absolute-URL", as received
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> ForwardProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line, _, rest = head.partition(b"\r\n")
            method, target, version = line.split(b" ")
            self.requests.append(f"{method.decode()} {target.decode()}")
            url = urlsplit(target.decode())
            path = (url.path or "/") + (f"?{url.query}" if url.query else "")
            up_reader, up_writer = await asyncio.open_connection(url.hostname, url.port)
            up_writer.write(b" ".join((method, path.encode(), version)) + b"\r\n" + rest)
            await asyncio.gather(_relay(reader, up_writer), _relay(up_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)  # type: ignore[arg-type]


async def _relay(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    finally:
        sink.close()


@pytest.fixture
async def proxy() -> AsyncIterator[ForwardProxy]:
    async with ForwardProxy() as running:
        yield running


def test_the_default_stack_is_ours_and_httpx_is_a_setting(no_proxy_env: pytest.MonkeyPatch) -> None:
    assert providers_http(Settings.from_env({})) is pool_transport
    assert isinstance(pool_transport(), ConnectionPool)
    chosen = providers_http(Settings.from_env({"SANIC_CHAT_UPSTREAM_HTTP": "httpx"}))
    assert chosen is httpx_transport
    # None: the client builds httpx's own transport (the one that honours proxies)
    assert httpx_transport() is None


def test_an_unknown_stack_is_refused_at_start_up() -> None:
    with pytest.raises(ConfigError, match="SANIC_CHAT_UPSTREAM_HTTP='fast'"):
        Settings.from_env({"SANIC_CHAT_UPSTREAM_HTTP": "fast"})


@pytest.mark.parametrize("vendor", VENDORS)
async def test_with_a_proxy_in_the_environment_replies_go_through_it(
    vendor: str,
    fake: FakeLLM,
    proxy: ForwardProxy,
    no_proxy_env: pytest.MonkeyPatch,
    catalogs: list[ModelCatalog],
) -> None:
    no_proxy_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    # the operator asked for ours; the proxy wins, since our pool cannot use one
    transports = providers_http(Settings.from_env({"SANIC_CHAT_UPSTREAM_HTTP": "pool"}))
    assert transports is httpx_transport
    spec = spec_for(fake, vendor)
    catalog = ModelCatalog([spec], spec.name, transports=transports)
    catalogs.append(catalog)
    outcome = await run(catalog.get(spec.name), ask("through the proxy"))
    assert outcome.error is None
    assert outcome.text == reply_text("through the proxy", 8)
    assert len(proxy.requests) == 1
    method, target = proxy.requests[0].split(" ")
    assert method == "POST"
    assert target.startswith(f"{spec.base_url}/")  # absolute form: a proxied request
