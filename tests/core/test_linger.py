"""How long a busy process lets flowing text gather (TransportContext.linger_s)."""

from __future__ import annotations

import pytest

from sanic_chat.transports.base import MAX_LINGER_FACTOR, TransportContext


class _Service:
    def __init__(self, running: int) -> None:
        self.running = {str(n): object() for n in range(running)}


def context(running: int, *, coalesce_s: float = 0.04, above: int = 32) -> TransportContext:
    ctx = TransportContext(
        authenticate=lambda *_: None,  # type: ignore[arg-type]
        metrics=None,  # type: ignore[arg-type]
        coalesce_s=coalesce_s,
        coalesce_above=above,
    )
    ctx.service = _Service(running)  # type: ignore[assignment]
    return ctx


@pytest.mark.parametrize(
    ("running", "expected_ms"),
    [(0, 0.0), (31, 0.0), (32, 40.0), (48, 60.0), (64, 80.0), (80, 100.0), (500, 100.0)],
)
def test_the_window_opens_at_the_threshold_and_grows_with_the_load(
    running: int, expected_ms: float
) -> None:
    assert context(running).linger_s() * 1000 == pytest.approx(expected_ms)


def test_the_window_never_exceeds_its_cap() -> None:
    assert context(10_000).linger_s() == pytest.approx(0.04 * MAX_LINGER_FACTOR)


def test_zero_turns_coalescing_off_at_any_load() -> None:
    assert context(10_000, coalesce_s=0).linger_s() == 0.0


def test_a_threshold_of_zero_holds_every_reply_for_the_base_window() -> None:
    assert context(0, coalesce_s=0.1, above=0).linger_s() == pytest.approx(0.1)
    assert context(3, coalesce_s=0.1, above=0).linger_s() == pytest.approx(0.1)
