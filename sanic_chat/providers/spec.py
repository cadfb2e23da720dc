"""One model as the models file describes it: a frozen value, validated by the catalog."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DEFAULT_ANTHROPIC_VERSION", "PROVIDER_NAMES", "ModelSpec"]

PROVIDER_NAMES = ("openai", "anthropic", "ollama", "demo")
DEFAULT_ANTHROPIC_VERSION = "2023-06-01"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str  # the model's name in the models file
    provider: str  # one of PROVIDER_NAMES
    model: str  # the upstream's own model id
    base_url: str | None = None  # required for every provider but demo
    api_key_env: str | None = None
    # resolved from ``api_key_env`` at load time; never printed, never described
    api_key: str | None = field(default=None, repr=False)
    max_tokens: int | None = None
    temperature: float | None = None
    # no byte from the upstream for this long -> provider_timeout
    stream_timeout_s: float = 60.0
    connect_timeout_s: float = 10.0
    # retries happen only before the first token, within this budget
    max_attempts: int = 3
    retry_deadline_s: float = 10.0
    retry_base_delay_s: float = 0.5
    retry_max_delay_s: float = 4.0
    # extra request headers (proxies, gateways); may hold secrets: never described
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    # anthropic
    anthropic_version: str = DEFAULT_ANTHROPIC_VERSION
    # openai: reasoning models want "max_completion_tokens"
    max_tokens_param: str = "max_tokens"
    # demo
    ttft_ms: float = 150.0
    tokens_per_second: float = 40.0
    reply_tokens: int = 60
