"""How long a busy process lets flowing text gather (core.load.linger_s; transports
ask the core for the number: ChatService.linger_s)."""

from __future__ import annotations

import pytest

from sanic_chat.core.load import MAX_LINGER_FACTOR, linger_s


def window(running: int, *, coalesce_s: float = 0.04, above: int = 32) -> float:
    return linger_s(running, coalesce_s=coalesce_s, coalesce_above=above)


@pytest.mark.parametrize(
    ("running", "expected_ms"),
    [(0, 0.0), (31, 0.0), (32, 40.0), (48, 60.0), (64, 80.0), (80, 100.0), (500, 100.0)],
)
def test_the_window_opens_at_the_threshold_and_grows_with_the_load(
    running: int, expected_ms: float
) -> None:
    assert window(running) * 1000 == pytest.approx(expected_ms)


def test_the_window_never_exceeds_its_cap() -> None:
    assert window(10_000) == pytest.approx(0.04 * MAX_LINGER_FACTOR)


def test_zero_turns_coalescing_off_at_any_load() -> None:
    assert window(10_000, coalesce_s=0) == 0.0


def test_a_threshold_of_zero_holds_every_reply_for_the_base_window() -> None:
    assert window(0, coalesce_s=0.1, above=0) == pytest.approx(0.1)
    assert window(3, coalesce_s=0.1, above=0) == pytest.approx(0.1)
