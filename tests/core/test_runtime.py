"""Garbage-collector tuning (sanic_chat/runtime.py) and its setting."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from sanic_chat.config import ConfigError, Settings
from sanic_chat.runtime import tune_garbage_collector


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_by_default_only_freezing_happens(restored_gc: None) -> None:
    before = gc.get_threshold()
    tune_garbage_collector(None)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() > 0


def test_tuning_freezes_what_exists_and_sets_the_thresholds(restored_gc: None) -> None:
    survivor = [object()]  # exists before: frozen with everything else
    tune_garbage_collector((12_345, 6, 7))
    assert gc.get_threshold() == (12_345, 6, 7)
    assert gc.get_freeze_count() > 0
    assert survivor


def test_cycles_are_still_collected_after_tuning(restored_gc: None) -> None:
    import weakref

    tune_garbage_collector((20_000, 50, 100))

    class Node:
        other: object

    a, b = Node(), Node()
    a.other, b.other = b, a
    alive = weakref.ref(a)
    del a, b
    gc.collect()
    assert alive() is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, None),
        ("default", None),
        ("DEFAULT", None),
        ("1000,5,5", (1000, 5, 5)),
    ],
)
def test_the_setting(raw: str | None, expected: tuple[int, int, int] | None) -> None:
    env = {} if raw is None else {"SANIC_CHAT_GC_THRESHOLD": raw}
    assert Settings.from_env(env).gc_threshold == expected


@pytest.mark.parametrize("raw", ["1000", "a,b,c", "0,10,10", "1,2,3,4"])
def test_a_bad_setting_says_what_it_takes(raw: str) -> None:
    with pytest.raises(ConfigError, match="three positive whole numbers"):
        Settings.from_env({"SANIC_CHAT_GC_THRESHOLD": raw})
