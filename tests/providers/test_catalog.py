"""The models file: a good one, each kind of bad one and what it says."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from sanic_chat.core.errors import ValidationFailed
from sanic_chat.providers.anthropic import AnthropicProvider
from sanic_chat.providers.catalog import ConfigError, load_catalog
from sanic_chat.providers.demo import DemoProvider
from sanic_chat.providers.ollama import OllamaProvider
from sanic_chat.providers.openai import OpenAIProvider

OPENAI_KEY = "sk-proj-abcdefghijklmnop0123456789"
ANTHROPIC_KEY = "sk-ant-api03-zyxwvutsrqponm987654"
ENV = {"OPENAI_API_KEY": OPENAI_KEY, "ANTHROPIC_API_KEY": ANTHROPIC_KEY}

GOOD = """
default = "claude"
[models.gpt]
provider = "openai"
base_url = "http://127.0.0.1:9001/v1/"
model = "gpt-4o-mini"
api_key_env = "OPENAI_API_KEY"
temperature = 1
max_tokens_param = "max_completion_tokens"
headers = { "X-Team" = "chat" }
[models.gpt-big]
provider = "openai"
base_url = "http://127.0.0.1:9001/v1"
model = "gpt-4o"
api_key_env = "OPENAI_API_KEY"
[models.claude]
provider = "anthropic"
base_url = "http://127.0.0.1:9002"
model = "claude-sonnet-4-5"
api_key_env = "ANTHROPIC_API_KEY"
max_tokens = 1024
retry_deadline_s = 5
max_attempts = 4
[models.llama]
provider = "ollama"
base_url = "http://127.0.0.1:11434"
model = "llama3.2"
stream_timeout_s = 30
[models.demo]
provider = "demo"
ttft_ms = 150
tokens_per_second = 40
reply_tokens = 60
"""


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "models.toml"
    path.write_text(text)
    return str(path)


async def test_a_good_file_makes_every_provider(tmp_path: Path) -> None:
    catalog = load_catalog(_write(tmp_path, GOOD), ENV)
    try:
        assert catalog.default == "claude"
        assert catalog.names() == ["gpt", "gpt-big", "claude", "llama", "demo"]
        assert isinstance(catalog.get("gpt"), OpenAIProvider)
        assert isinstance(catalog.get("claude"), AnthropicProvider)
        assert isinstance(catalog.get("llama"), OllamaProvider)
        assert isinstance(catalog.get("demo"), DemoProvider)
        assert catalog.get() is catalog.get("claude")
        assert "gpt" in catalog and "nope" not in catalog
        gpt = catalog.spec("gpt")
        assert gpt.api_key == OPENAI_KEY and gpt.temperature == 1.0
        assert gpt.headers == (("X-Team", "chat"),)
        assert OPENAI_KEY not in repr(gpt)
        claude = catalog.spec("claude")
        assert (claude.max_tokens, claude.retry_deadline_s, claude.max_attempts) == (1024, 5.0, 4)
        assert catalog.spec("llama").stream_timeout_s == 30.0
        assert catalog.spec("demo").reply_tokens == 60
    finally:
        await catalog.aclose()


async def test_models_on_one_base_url_share_one_pooled_client_closed_by_aclose(
    tmp_path: Path,
) -> None:
    catalog = load_catalog(_write(tmp_path, GOOD), ENV)
    gpt, big, claude = catalog.get("gpt"), catalog.get("gpt-big"), catalog.get("claude")
    assert isinstance(gpt, OpenAIProvider) and isinstance(big, OpenAIProvider)
    assert isinstance(claude, AnthropicProvider)
    assert gpt.client is big.client  # the trailing slash does not make a second pool
    assert gpt.client is not claude.client
    assert gpt.url == "http://127.0.0.1:9001/v1/chat/completions"
    await catalog.aclose()
    assert gpt.client.is_closed and claude.client.is_closed


async def test_describe_lists_models_and_never_keys_urls_or_headers(tmp_path: Path) -> None:
    catalog = load_catalog(_write(tmp_path, GOOD), ENV)
    described = catalog.describe()
    await catalog.aclose()
    assert described[0] == {
        "name": "gpt",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "default": False,
    }
    assert [d["name"] for d in described if d["default"]] == ["claude"]
    text = orjson.dumps(described).decode()
    for secret in (OPENAI_KEY, ANTHROPIC_KEY, "127.0.0.1", "X-Team", "API_KEY"):
        assert secret not in text


async def test_no_file_means_the_builtin_demo_only() -> None:
    catalog = load_catalog(None, {})
    assert catalog.default == "demo" and catalog.names() == ["demo"]
    assert catalog.describe() == [
        {"name": "demo", "provider": "demo", "model": "demo", "default": True}
    ]
    await catalog.aclose()


async def test_an_unknown_model_is_a_validation_error() -> None:
    catalog = load_catalog(None, {})
    with pytest.raises(ValidationFailed, match="unknown model gpt-9") as caught:
        catalog.get("gpt-9")
    assert caught.value.code == "validation_error"
    await catalog.aclose()


async def test_default_is_the_first_model_when_not_named(tmp_path: Path) -> None:
    text = '[models.b]\nprovider = "demo"\n[models.a]\nprovider = "demo"\n'
    catalog = load_catalog(_write(tmp_path, text), {})
    assert catalog.default == "b"
    await catalog.aclose()


def test_a_missing_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="no such file") as caught:
        load_catalog(missing, {})
    assert missing in str(caught.value) and "SANIC_CHAT_MODELS" in str(caught.value)


BAD = [
    ("not toml", "[models.gpt\nprovider=", "not valid TOML"),
    ("no models", 'default = "x"\n', "no models"),
    ("unknown top level", 'modles = 1\n[models.d]\nprovider = "demo"\n', "unknown top-level"),
    ("no provider", '[models.gpt]\nmodel = "m"\n', "model 'gpt': provider is missing"),
    (
        "unknown provider",
        '[models.gpt]\nprovider = "openia"\n',
        "model 'gpt': unknown provider 'openia'; use one of openai, anthropic, ollama, demo",
    ),
    (
        "missing base_url",
        '[models.gpt]\nprovider = "openai"\nmodel = "m"\n',
        "model 'gpt': base_url is required for provider 'openai'",
    ),
    (
        "missing model",
        '[models.gpt]\nprovider = "openai"\nbase_url = "http://h"\n',
        "model 'gpt': model (the upstream's own model id) is required",
    ),
    (
        "bad url",
        '[models.gpt]\nprovider = "openai"\nmodel = "m"\nbase_url = "h:9001"\n',
        "base_url must be an http:// or https:// URL",
    ),
    (
        "unknown default",
        'default = "gtp"\n[models.gpt]\nprovider = "demo"\n',
        "default names 'gtp', which is not a model here; use one of gpt",
    ),
    (
        "wrong type",
        '[models.c]\nprovider = "anthropic"\nmodel = "m"\nbase_url = "http://h"\nmax_tokens = "many"\n',
        "model 'c': max_tokens must be an integer, not 'many'",
    ),
    (
        "bool is not a number",
        '[models.d]\nprovider = "demo"\nttft_ms = true\n',
        "ttft_ms must be a number",
    ),
    (
        "out of range",
        '[models.d]\nprovider = "demo"\ntemperature = 3.5\n',
        "temperature must be between 0 and 2",
    ),
    (
        "typo",
        '[models.d]\nprovider = "demo"\nreply_token = 5\n',
        "unknown setting 'reply_token'",
    ),
    (
        "not for this provider",
        '[models.o]\nprovider = "ollama"\nmodel = "m"\nbase_url = "http://h"\nttft_ms = 5\n',
        "ttft_ms does not apply to provider 'ollama' (only to demo); remove it",
    ),
    (
        "unset key variable",
        '[models.gpt]\nprovider = "openai"\nmodel = "m"\nbase_url = "http://h"\n'
        'api_key_env = "NOT_SET_KEY"\n',
        "api_key_env names NOT_SET_KEY, which is not set in the environment; "
        "export NOT_SET_KEY=... or remove api_key_env",
    ),
    ("model not a table", "[models]\ngpt = 3\n", "models.gpt must be a table"),
]


@pytest.mark.parametrize(("text", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_bad_file_names_the_file_the_model_and_the_fix(
    tmp_path: Path, text: str, message: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_catalog(path, {"EMPTY": ""})
    assert str(caught.value).startswith(f"models file {path}: ")
    assert message in str(caught.value)


def test_an_empty_key_variable_counts_as_unset(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        '[models.gpt]\nprovider = "openai"\nmodel = "m"\nbase_url = "http://h"\napi_key_env = "K"\n',
    )
    with pytest.raises(ConfigError, match="K, which is not set"):
        load_catalog(path, {"K": ""})
