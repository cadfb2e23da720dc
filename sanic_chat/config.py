"""Settings from the environment (``SANIC_CHAT_*``), validated at start-up.

A wrong value fails here, before anything listens, with a message that names
the variable and says what to write instead.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

__all__ = [
    "LOG_LEVELS",
    "ConfigError",
    "RateLimit",
    "Settings",
    "default_data_dir",
    "default_database_url",
    "known_variables",
    "parse_log_level",
    "unknown_variables",
]

#: the values of ``SANIC_CHAT_LOG_LEVEL`` (any case; WARN means WARNING)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

#: variables read outside :meth:`Settings.from_env`, with where; everything
#: ``from_env`` reads is known without a list (see :func:`known_variables`)
_READ_ELSEWHERE = (
    "SANIC_CHAT_HOST",  # cli.py: serve's --host default
    "SANIC_CHAT_PORT",  # cli.py: serve's --port default
    "SANIC_CHAT_REQUIRE_SERVICES",  # tests/conftest.py: fail, not skip, without services
    "SANIC_CHAT_BENCH_DATABASE_URL",  # benchmarks: the database of a benchmark run
)
#: test-only variables (tests/conftest.py: where the test services are)
_TEST_PREFIX = "SANIC_CHAT_TEST_"

_N = TypeVar("_N", int, float)


class ConfigError(ValueError):
    """A setting is wrong; the message says which and how to fix it."""


@dataclass(frozen=True, slots=True)
class RateLimit:
    count: int
    period_s: float

    @classmethod
    def parse(cls, text: str, variable: str = "SANIC_CHAT_RATE_LIMIT") -> RateLimit | None:
        text = text.strip().lower()
        if text in ("", "off", "none", "0"):
            return None
        match = re.fullmatch(r"(\d+)\s*/\s*(second|minute|hour|s|m|h)", text)
        if not match or int(match.group(1)) <= 0:
            raise ConfigError(
                f"{variable}={text!r} is not a rate: write N/second, N/minute or N/hour "
                "(e.g. 60/minute), or 'off'"
            )
        period = {"second": 1, "s": 1, "minute": 60, "m": 60, "hour": 3600, "h": 3600}
        return cls(int(match.group(1)), float(period[match.group(2)]))


def _flag(raw: str | None, *, default: bool, name: str) -> bool:
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"SANIC_CHAT_{name}={raw!r}: use 1 or 0")


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "sanic-chat"


def default_database_url(data_dir: Path) -> str:
    """The embedded default: ``chat.db`` in the data directory (``data_dir`` is
    absolute, so the URL has four slashes)."""
    return f"sqlite:///{data_dir / 'chat.db'}"


def parse_log_level(raw: str | None) -> str:
    """``SANIC_CHAT_LOG_LEVEL`` as a level name (INFO when unset or empty)."""
    if raw is None or not raw.strip():
        return "INFO"
    level = raw.strip().upper()
    level = "WARNING" if level == "WARN" else level
    if level not in LOG_LEVELS:
        raise ConfigError(
            f"SANIC_CHAT_LOG_LEVEL={raw!r} is not a log level: use one of {', '.join(LOG_LEVELS)}"
        )
    return level


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str
    data_dir: Path
    bus_url: str = "memory://"
    #: namespaces the Redis bus's keys and channels (deployments sharing a Redis differ here)
    bus_prefix: str = "sanic-chat"
    models_path: str | None = None
    auth: str = "none"
    #: never in a repr: settings may be logged
    jwt_secret: str | None = field(default=None, repr=False)
    jwt_public_key_path: str | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    allowed_origins: tuple[str, ...] = ()
    rate_limit: RateLimit | None = None
    #: per user, for the frames that read the database on the user's behalf
    #: (``conversation.subscribe``, ``generation.resume``, ``generation.cancel``)
    frame_rate_limit: RateLimit | None = None
    transports: tuple[str, ...] = ("websocket", "sse")
    #: the providers' HTTP stack: "pool" (ours) or "httpx" (httpx's own transport);
    #: httpx's own whenever the environment names a proxy (providers/upstream.py)
    upstream_http: str = "pool"
    checkpoint_interval_s: float = 1.0
    tail_ttl_s: float = 60.0
    lease_s: float = 15.0
    drain_timeout_s: float = 30.0
    heartbeat_s: float = 15.0
    #: when at least ``coalesce_above`` replies run in a process, text for a
    #: connection waits up to ``coalesce_ms`` to merge into fewer frames, longer
    #: the more replies run (see core/load.py, linger_s; a reply's first
    #: text is never held back)
    coalesce_ms: float = 40.0
    coalesce_above: int = 32
    #: the garbage collector's thresholds once serving (None: Python's own);
    #: see runtime.py for the latency/memory trade-off
    gc_threshold: tuple[int, int, int] | None = None
    history_max_chars: int = 24_000
    max_content_chars: int = 32_000
    #: per-connection outbound queue bounds; past them a consumer is dropped (resumable)
    outbox_max_chars: int = 2_000_000
    outbox_max_frames: int = 10_000
    max_frame_bytes: int = 256 * 1024
    max_body_bytes: int = 1024 * 1024
    #: per user and per process (None: no per-user cap, the default with
    #: ``auth=none``, whose one user is whoever runs the server)
    max_connections_per_user: int | None = None
    max_running_replies_per_user: int | None = None
    #: open WebSocket and SSE connections per process, whoever opens them
    max_connections: int = 10_000
    idle_timeout_s: float = 300.0
    #: from a connection's start (or a kept-alive connection's next request) to
    #: the end of its request head; later a 408 (security/handshakes.py)
    header_timeout_s: float = 10.0
    #: connections per process still sending their request head (None: 1,024, or a
    #: quarter of the open-files limit if lower); past it the oldest is closed
    max_pending_handshakes: int | None = None
    #: lifetime of a one-time ticket from POST /api/v1/tickets
    ticket_ttl_s: float = 60.0
    system_prompt: str | None = None
    log_format: str = "text"
    log_level: str = "INFO"
    log_content: bool = False
    node_id: str | None = None
    #: create/upgrade the schema at start-up, on either database (PostgreSQL:
    #: under an advisory lock, so workers and nodes may start together); off,
    #: a missing schema stops the start with a line naming ``sanic-chat migrate``
    auto_migrate: bool = True
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def get(name: str, default: str | None = None) -> str | None:
            value = env.get(f"SANIC_CHAT_{name}")
            return value if value not in (None, "") else default

        def parsed(
            name: str, default: _N, minimum: _N, convert: Callable[[str], _N], what: str
        ) -> _N:
            raw = get(name)
            if raw is None:
                return default
            try:
                value = convert(raw)
            except ValueError:
                raise ConfigError(f"SANIC_CHAT_{name}={raw!r} must be {what}") from None
            if value < minimum:
                raise ConfigError(f"SANIC_CHAT_{name}={raw!r} must be at least {minimum}")
            return value

        def number(name: str, default: float, *, minimum: float = 0.0) -> float:
            return parsed(name, default, minimum, float, "a number")

        def integer(name: str, default: int, *, minimum: int = 1) -> int:
            return parsed(name, default, minimum, int, "a whole number")

        def choice(name: str, allowed: tuple[str, ...], advice: str) -> str:
            """One of ``allowed`` (any case), the first when unset."""
            value = (get(name) or allowed[0]).strip().lower()
            if value not in allowed:
                raise ConfigError(f"SANIC_CHAT_{name}={value!r}: {advice}")
            return value

        def cap(name: str, default: int | None) -> int | None:
            """A whole number of at least 1, or ``off`` (None: no cap)."""
            raw = get(name)
            if raw is None:
                return default
            if raw.strip().lower() == "off":
                return None
            return integer(name, 1)

        def gc_threshold() -> tuple[int, int, int] | None:
            raw = get("GC_THRESHOLD")
            if raw is None or raw.strip().lower() == "default":
                return None
            try:
                parts = tuple(int(p) for p in raw.split(","))
            except ValueError:
                parts = ()
            if len(parts) != 3 or min(parts) < 1:
                raise ConfigError(
                    f"SANIC_CHAT_GC_THRESHOLD={raw!r} must be three positive whole numbers "
                    "like 20000,50,100, or 'default' for Python's own"
                )
            return (parts[0], parts[1], parts[2])

        # absolute: a relative directory is taken from the working directory now,
        # as a relative SQLite URL is (store/database.py:parse_url)
        data_dir = Path(get("DATA_DIR") or default_data_dir()).expanduser().absolute()
        database_url = get("DATABASE_URL") or default_database_url(data_dir)
        if not database_url.startswith(("sqlite://", "postgresql://", "postgres://")):
            raise ConfigError(
                f"SANIC_CHAT_DATABASE_URL={database_url!r} is not supported: use "
                "sqlite:///path/to/chat.db or postgresql://user:pass@host:port/db"
            )
        bus_url = get("BUS_URL", "memory://") or "memory://"
        if not bus_url.startswith(("memory://", "redis://", "rediss://")):
            raise ConfigError(
                f"SANIC_CHAT_BUS_URL={bus_url!r} is not supported: use memory:// (one process) "
                "or redis://host:port/db"
            )
        bus_prefix = get("BUS_PREFIX", "sanic-chat") or "sanic-chat"
        if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,100}", bus_prefix):
            raise ConfigError(
                f"SANIC_CHAT_BUS_PREFIX={bus_prefix!r}: use letters, digits and . _ : - only"
            )
        models_path = get("MODELS")
        if models_path is not None and not Path(models_path).expanduser().is_file():
            raise ConfigError(
                f"SANIC_CHAT_MODELS={models_path!r}: no such file. Point it at a TOML models "
                "file (see docs/configuration.md) or unset it to use the built-in demo model"
            )
        auth = choice("AUTH", ("none", "jwt"), "use 'none' or 'jwt'")
        jwt_secret = get("JWT_SECRET")
        jwt_public_key = get("JWT_PUBLIC_KEY")
        if auth == "jwt" and not (jwt_secret or jwt_public_key):
            raise ConfigError(
                "SANIC_CHAT_AUTH=jwt needs SANIC_CHAT_JWT_SECRET (HS256) or "
                "SANIC_CHAT_JWT_PUBLIC_KEY (path of an RS256 public key in PEM)"
            )
        if jwt_public_key is not None and not Path(jwt_public_key).expanduser().is_file():
            raise ConfigError(f"SANIC_CHAT_JWT_PUBLIC_KEY={jwt_public_key!r}: no such file")
        if auth == "jwt" and jwt_secret and not jwt_public_key and len(jwt_secret.encode()) < 32:
            # an HS256 token is an offline guessing oracle for a short secret
            raise ConfigError(
                f"SANIC_CHAT_JWT_SECRET is {len(jwt_secret.encode())} bytes: use at least 32 "
                "random bytes, e.g. python -c 'import secrets; print(secrets.token_urlsafe(48))'"
            )
        origins = tuple(
            o.strip().rstrip("/") for o in (get("ALLOWED_ORIGINS") or "").split(",") if o.strip()
        )
        if "*" in origins and auth == "none":
            raise ConfigError(
                "SANIC_CHAT_ALLOWED_ORIGINS=* with SANIC_CHAT_AUTH=none would let any web page "
                "read and write every conversation: list the origins, or use SANIC_CHAT_AUTH=jwt"
            )
        for origin in origins:
            if origin != "*" and not re.fullmatch(r"(?i)(https?|wss?)://[^/?#@\s]+", origin):
                raise ConfigError(
                    f"SANIC_CHAT_ALLOWED_ORIGINS: {origin!r} is not an origin; write "
                    "scheme://host[:port] (e.g. https://chat.example.com), comma-separated"
                )
        rate_raw = get("RATE_LIMIT")
        if rate_raw is None:
            rate_limit = RateLimit(60, 60.0) if auth == "jwt" else None
        else:
            rate_limit = RateLimit.parse(rate_raw)
        frame_rate_raw = get("FRAME_RATE_LIMIT")
        if frame_rate_raw is None:
            # generous: a client reconnecting follows each conversation and
            # reply once, and asks for the rest of a reply at most once per gap
            frame_rate_limit = RateLimit(600, 60.0) if auth == "jwt" else None
        else:
            frame_rate_limit = RateLimit.parse(frame_rate_raw, "SANIC_CHAT_FRAME_RATE_LIMIT")
        transports = tuple(
            t.strip().lower()
            for t in (get("TRANSPORTS") or "websocket,sse").split(",")
            if t.strip()
        )
        known = {"websocket", "sse"}
        if not transports or not set(transports) <= known:
            raise ConfigError(
                f"SANIC_CHAT_TRANSPORTS={','.join(transports)!r}: choose from {sorted(known)}"
            )
        upstream_http = choice(
            "UPSTREAM_HTTP",
            ("pool", "httpx"),
            "use 'pool' (ours, the default) or 'httpx' (httpx's own transport)",
        )
        log_format = choice("LOG_FORMAT", ("text", "json"), "use 'text' or 'json'")
        return cls(
            database_url=database_url,
            data_dir=data_dir,
            bus_url=bus_url,
            bus_prefix=bus_prefix,
            models_path=models_path,
            auth=auth,
            jwt_secret=jwt_secret,
            jwt_public_key_path=jwt_public_key,
            jwt_audience=get("JWT_AUDIENCE"),
            jwt_issuer=get("JWT_ISSUER"),
            allowed_origins=origins,
            rate_limit=rate_limit,
            frame_rate_limit=frame_rate_limit,
            transports=transports,
            upstream_http=upstream_http,
            checkpoint_interval_s=number("CHECKPOINT_INTERVAL_S", 1.0, minimum=0.05),
            tail_ttl_s=number("TAIL_TTL_S", 60.0, minimum=0.1),
            lease_s=number("LEASE_S", 15.0, minimum=1.0),
            drain_timeout_s=number("DRAIN_TIMEOUT_S", 30.0),
            heartbeat_s=number("HEARTBEAT_S", 15.0, minimum=0.1),
            coalesce_ms=number("COALESCE_MS", 40.0),
            coalesce_above=integer("COALESCE_ABOVE", 32, minimum=0),
            gc_threshold=gc_threshold(),
            history_max_chars=integer("HISTORY_MAX_CHARS", 24_000),
            max_content_chars=integer("MAX_CONTENT_CHARS", 32_000),
            outbox_max_chars=integer("OUTBOX_MAX_CHARS", 2_000_000, minimum=1_000),
            outbox_max_frames=integer("OUTBOX_MAX_FRAMES", 10_000, minimum=10),
            max_frame_bytes=integer("MAX_FRAME_BYTES", 256 * 1024, minimum=1024),
            max_body_bytes=integer("MAX_BODY_BYTES", 1024 * 1024, minimum=1024),
            # with none the one user is the operator (a load script too): no per-user
            # caps unless set; the per-process connection cap holds either way
            max_connections_per_user=cap("MAX_CONNECTIONS_PER_USER", 20 if auth == "jwt" else None),
            max_running_replies_per_user=cap(
                "MAX_RUNNING_REPLIES_PER_USER", 4 if auth == "jwt" else None
            ),
            max_connections=integer("MAX_CONNECTIONS", 10_000),
            idle_timeout_s=number("IDLE_TIMEOUT_S", 300.0, minimum=1.0),
            header_timeout_s=number("HEADER_TIMEOUT_S", 10.0, minimum=0.5),
            max_pending_handshakes=integer("MAX_PENDING_HANDSHAKES", 0) or None,
            ticket_ttl_s=number("TICKET_TTL_S", 60.0, minimum=1.0),
            system_prompt=get("SYSTEM_PROMPT"),
            log_format=log_format,
            log_level=parse_log_level(get("LOG_LEVEL")),
            log_content=(get("LOG_CONTENT", "0") or "0") in ("1", "true", "yes"),
            node_id=get("NODE_ID"),
            auto_migrate=_flag(get("AUTO_MIGRATE"), default=True, name="AUTO_MIGRATE"),
        )


def known_variables() -> frozenset[str]:
    """Every ``SANIC_CHAT_*`` name sanic-chat reads (``SANIC_CHAT_TEST_*`` aside).

    Derived from :meth:`Settings.from_env` itself, run on an empty environment
    that records each name asked for: ``from_env`` reads every variable whatever
    the others say (keep it so), and an empty environment is a valid one.
    """
    asked: set[str] = set()

    class _Recording(dict[str, str]):
        def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
            asked.add(key)
            return default

    Settings.from_env(_Recording())
    return frozenset(asked | set(_READ_ELSEWHERE))


def unknown_variables(env: Mapping[str, str] | None = None) -> list[tuple[str, str | None]]:
    """The ``SANIC_CHAT_*`` names in ``env`` that nothing reads (a misspelling is
    otherwise silently ignored), each with the closest known name or None."""
    env = os.environ if env is None else env
    known = known_variables()
    unknown = sorted(
        name
        for name in env
        if name.startswith("SANIC_CHAT_")
        and name not in known
        and not name.startswith(_TEST_PREFIX)
    )
    # compared without the prefix they all share, which would make any two look alike
    suffixes = {name.removeprefix("SANIC_CHAT_"): name for name in known}

    def closest(name: str) -> str | None:
        match = difflib.get_close_matches(name.removeprefix("SANIC_CHAT_"), suffixes, n=1)
        return suffixes[match[0]] if match else None

    return [(name, closest(name)) for name in unknown]
