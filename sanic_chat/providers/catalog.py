"""The configured models: the TOML models file, validated once at start-up, and
one provider per model over one pooled ``httpx.AsyncClient`` per upstream.

Every mistake in the file is a :class:`ConfigError` naming the file, the model
and what to change, raised at start-up rather than at the first message.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import httpx

from ..core.errors import ValidationFailed
from ..core.ports import Provider
from .anthropic import AnthropicProvider
from .demo import DemoProvider
from .http import HttpProvider
from .ollama import OllamaProvider
from .openai import OpenAIProvider
from .spec import PROVIDER_NAMES, ModelSpec
from .upstream import POOL_LIMITS, TransportFactory, pool_transport

__all__ = [
    "BUILTIN_DEMO",
    "POOL_LIMITS",
    "ConfigError",
    "ModelCatalog",
    "ModelSpec",
    "load_catalog",
    "parse_models",
]

BUILTIN_DEMO = ModelSpec(name="demo", provider="demo", model="demo")

_HTTP_PROVIDERS: dict[str, Callable[[ModelSpec, httpx.AsyncClient], HttpProvider]] = {
    "openai": OpenAIProvider,
    "anthropic": AnthropicProvider,
    "ollama": OllamaProvider,
}


class ConfigError(ValueError):
    """The models file (or its environment) is wrong; the message says how to fix it."""


# --------------------------------------------------------------------------- schema


@dataclass(frozen=True, slots=True)
class _Setting:
    kind: str  # "str" | "int" | "number" | "headers"
    check: Callable[[Any], bool] | None = None
    rule: str = ""  # what ``check`` requires, said to a human
    providers: tuple[str, ...] = PROVIDER_NAMES


_HTTP = ("openai", "anthropic", "ollama")
_SETTINGS: dict[str, _Setting] = {
    "provider": _Setting("str"),
    "model": _Setting("str"),
    "base_url": _Setting(
        "str", lambda v: v.startswith(("http://", "https://")), "an http:// or https:// URL", _HTTP
    ),
    "api_key_env": _Setting("str", lambda v: bool(v), "a variable name", _HTTP),
    "max_tokens": _Setting("int", lambda v: v > 0, "greater than 0"),
    "temperature": _Setting("number", lambda v: 0 <= v <= 2, "between 0 and 2"),
    "stream_timeout_s": _Setting("number", lambda v: v > 0, "greater than 0", _HTTP),
    "connect_timeout_s": _Setting("number", lambda v: v > 0, "greater than 0", _HTTP),
    "max_attempts": _Setting("int", lambda v: v >= 1, "at least 1", _HTTP),
    "retry_deadline_s": _Setting("number", lambda v: v >= 0, "0 or more", _HTTP),
    "retry_base_delay_s": _Setting("number", lambda v: v >= 0, "0 or more", _HTTP),
    "retry_max_delay_s": _Setting("number", lambda v: v >= 0, "0 or more", _HTTP),
    "headers": _Setting("headers", None, "", _HTTP),
    "anthropic_version": _Setting("str", lambda v: bool(v), "a version date", ("anthropic",)),
    "max_tokens_param": _Setting(
        "str",
        lambda v: v in ("max_tokens", "max_completion_tokens"),
        '"max_tokens" or "max_completion_tokens"',
        ("openai",),
    ),
    "ttft_ms": _Setting("number", lambda v: v >= 0, "0 or more", ("demo",)),
    "tokens_per_second": _Setting("number", lambda v: v >= 0, "0 or more (0: unpaced)", ("demo",)),
    "reply_tokens": _Setting("int", lambda v: v > 0, "greater than 0", ("demo",)),
}
_KIND_WORDS = {
    "str": "a string",
    "int": "an integer",
    "number": "a number",
    "headers": 'a table of strings, e.g. headers = { "X-Team" = "chat" }',
}


def _type_ok(kind: str, value: Any) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )


def _model_spec(
    name: str, table: Mapping[str, Any], *, source: str, env: Mapping[str, str]
) -> ModelSpec:
    def fail(what: str) -> ConfigError:
        return ConfigError(f"{source}: model {name!r}: {what}")

    provider = table.get("provider")
    if provider is None:
        raise fail(f"provider is missing; set provider = one of {', '.join(PROVIDER_NAMES)}")
    if provider not in PROVIDER_NAMES:
        raise fail(f"unknown provider {provider!r}; use one of {', '.join(PROVIDER_NAMES)}")
    values: dict[str, Any] = {}
    for key, value in table.items():
        setting = _SETTINGS.get(key)
        if setting is None:
            raise fail(f"unknown setting {key!r}; known: {', '.join(sorted(_SETTINGS))}")
        if provider not in setting.providers:
            raise fail(
                f"{key} does not apply to provider {provider!r} "
                f"(only to {', '.join(setting.providers)}); remove it"
            )
        if not _type_ok(setting.kind, value):
            raise fail(f"{key} must be {_KIND_WORDS[setting.kind]}, not {value!r}")
        if setting.check is not None and not setting.check(value):
            raise fail(f"{key} must be {setting.rule}, not {value!r}")
        values[key] = value

    if provider != "demo":
        if "base_url" not in values:
            raise fail(f'base_url is required for provider {provider!r} (base_url = "http://...")')
        if "model" not in values:
            raise fail(f"model (the upstream's own model id) is required for provider {provider!r}")
    values.setdefault("model", name)
    if "headers" in values:
        values["headers"] = tuple(values["headers"].items())
    for key in (
        "temperature",
        "stream_timeout_s",
        "connect_timeout_s",
        "retry_deadline_s",
        "retry_base_delay_s",
        "retry_max_delay_s",
        "ttft_ms",
        "tokens_per_second",
    ):
        if key in values:
            values[key] = float(values[key])
    key_env = values.get("api_key_env")
    if key_env is not None:
        api_key = env.get(key_env)
        if not api_key:
            raise fail(
                f"api_key_env names {key_env}, which is not set in the environment; "
                f"export {key_env}=... or remove api_key_env"
            )
        values["api_key"] = api_key
    return ModelSpec(name=name, **values)


def parse_models(
    data: Mapping[str, Any], *, source: str, env: Mapping[str, str]
) -> tuple[list[ModelSpec], str]:
    """(specs in file order, default name) from a parsed models file."""
    unknown = set(data) - {"default", "models"}
    if unknown:
        raise ConfigError(
            f"{source}: unknown top-level key(s) {', '.join(sorted(unknown))}; "
            'only default = "name" and [models.NAME] tables belong there'
        )
    models = data.get("models")
    if not isinstance(models, dict) or not models:
        raise ConfigError(
            f'{source}: no models; add at least one [models.NAME] table with provider = "..."'
        )
    specs: list[ModelSpec] = []
    for name, table in models.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: models.{name} must be a table ([models.{name}])")
        specs.append(_model_spec(name, table, source=source, env=env))
    default = data.get("default", specs[0].name)
    if not isinstance(default, str):
        raise ConfigError(f"{source}: default must be a model name (a string), not {default!r}")
    if default not in models:
        raise ConfigError(
            f"{source}: default names {default!r}, which is not a model here; "
            f"use one of {', '.join(models)}"
        )
    return specs, default


def load_catalog(
    path: str | os.PathLike[str] | None,
    env: Mapping[str, str],
    *,
    transports: TransportFactory = pool_transport,
) -> ModelCatalog:
    """The catalog of the models file at ``path``; with no path, the built-in
    demo model alone. ``transports``: see :class:`ModelCatalog`."""
    if path is None or str(path) == "":
        return ModelCatalog([BUILTIN_DEMO], "demo", transports=transports)
    source = f"models file {os.fspath(path)}"
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such file; fix SANIC_CHAT_MODELS or create it") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read it ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    specs, default = parse_models(data, source=source, env=env)
    return ModelCatalog(specs, default, transports=transports)


# --------------------------------------------------------------------------- catalog


class ModelCatalog:
    """Providers by model name. Owns the HTTP clients: one per upstream base
    URL, shared by every model on it, closed by :meth:`aclose`. Each client's
    transport comes from ``transports`` (the HTTP stack the composition root
    picked, see :mod:`.upstream`; tests may hand a ``MockTransport``)."""

    def __init__(
        self,
        specs: Sequence[ModelSpec],
        default: str,
        *,
        transports: TransportFactory = pool_transport,
    ) -> None:
        self._specs = {spec.name: spec for spec in specs}
        if default not in self._specs:
            raise ConfigError(f"default model {default!r} is not among {', '.join(self._specs)}")
        self.default = default
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._providers: dict[str, Provider] = {}
        for spec in specs:
            if spec.provider == "demo":
                self._providers[spec.name] = DemoProvider(
                    spec.name,
                    ttft_ms=spec.ttft_ms,
                    tokens_per_second=spec.tokens_per_second,
                    reply_tokens=spec.reply_tokens,
                )
                continue
            assert spec.base_url is not None
            base = spec.base_url.rstrip("/")
            spec = replace(spec, base_url=base)
            client = self._clients.get(base)
            if client is None:
                client = self._clients[base] = httpx.AsyncClient(
                    limits=POOL_LIMITS,
                    timeout=httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=10.0),
                    transport=transports(),
                    follow_redirects=False,
                )
            self._providers[spec.name] = _HTTP_PROVIDERS[spec.provider](spec, client)

    def names(self) -> list[str]:
        return list(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def spec(self, name: str) -> ModelSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise ValidationFailed(f"unknown model {name}") from None

    def get(self, name: str | None = None) -> Provider:
        """The provider of ``name`` (None: the default model)."""
        try:
            return self._providers[self.default if name is None else name]
        except KeyError:
            raise ValidationFailed(f"unknown model {name}") from None

    def describe(self) -> list[dict[str, Any]]:
        """What ``GET /api/v1/models`` shows: never keys, URLs or headers."""
        return [
            {
                "name": spec.name,
                "provider": spec.provider,
                "model": spec.model,
                "default": spec.name == self.default,
            }
            for spec in self._specs.values()
        ]

    async def aclose(self) -> None:
        for provider in self._providers.values():
            await provider.aclose()
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()
