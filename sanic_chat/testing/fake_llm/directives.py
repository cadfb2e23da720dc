"""The fake LLM's directives: ``key=value;...`` that change how one request is
answered (see :mod:`sanic_chat.testing.fake_llm` for the list)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

__all__ = ["DirectiveError", "FakeOptions", "Fault"]


class DirectiveError(ValueError):
    """A directive the fake does not understand (answered 400)."""


_FAULT_KINDS = ("status", "cut", "stall", "malformed", "error")


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str  # one of _FAULT_KINDS
    value: float  # status code, token index, or stall seconds

    @classmethod
    def parse(cls, text: str) -> Fault | None:
        text = text.strip()
        if text in ("", "none"):
            return None
        kind, _, arg = text.partition(":")
        if kind not in _FAULT_KINDS:
            raise DirectiveError(f"unknown fault {kind!r}; use one of {', '.join(_FAULT_KINDS)}")
        try:
            value = float(arg) if arg else 0.0
        except ValueError:
            raise DirectiveError(f"fault {text!r}: {arg!r} is not a number") from None
        if kind == "status" and not 400 <= value <= 599:
            raise DirectiveError(f"fault {text!r}: give an error status, e.g. status:503")
        return cls(kind, value)

    def __str__(self) -> str:
        value = int(self.value) if self.value == int(self.value) else self.value
        return f"{self.kind}:{value}"


_ALIASES = {"tokens_per_second": "tps", "reply_tokens": "tokens"}


@dataclass(frozen=True, slots=True)
class FakeOptions:
    ttft_ms: float = 200.0
    tps: float = 50.0
    tokens: int = 40
    fault: Fault | None = None
    at: int = 0
    retry_after: float = 1.0
    error_type: str | None = None
    fail_first: int = 0  # 0: the fault hits every attempt
    key: str | None = None

    def with_directives(self, text: str) -> FakeOptions:
        changes: dict[str, Any] = {}
        for part in text.split(";"):
            if not part.strip():
                continue
            name, sep, value = part.partition("=")
            name, value = name.strip(), value.strip()
            name = _ALIASES.get(name, name)
            if not sep:
                raise DirectiveError(f"directive {part.strip()!r} needs a value (name=value)")
            try:
                if name in ("ttft_ms", "tps", "retry_after"):
                    changes[name] = float(value)
                elif name in ("tokens", "at", "fail_first"):
                    changes[name] = int(value)
                elif name == "fault":
                    changes[name] = Fault.parse(value)
                elif name in ("key", "error_type"):
                    changes[name] = value or None
                else:
                    raise DirectiveError(f"unknown fake-llm directive {name!r}")
            except ValueError as exc:
                if isinstance(exc, DirectiveError):
                    raise
                raise DirectiveError(f"directive {name}={value!r} is not a number") from None
        return replace(self, **changes) if changes else self

    @property
    def bucket(self) -> str:
        if self.key:
            return self.key
        return str(self.fault) if self.fault else "default"
