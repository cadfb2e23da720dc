"""Fixtures of the browser tests in this folder (tests/e2e/test_*browser.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser import chromium
from tests.conftest import require_chromium


@pytest.fixture(scope="module")
def chromium_path() -> str:
    """Asked for by a browser module's server fixtures, so that no server starts
    for tests that would skip without Chromium."""
    return require_chromium()


@pytest.fixture(scope="module")
def browser(chromium_path: str) -> Iterator[Any]:
    with chromium() as launched:
        yield launched
