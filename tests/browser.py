"""Chromium for the browser tests: Debian's binary, driven by Playwright (a
downloaded browser is never used). Without Chromium or Playwright a test skips
locally and fails under CI (see ``require_chromium``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.conftest import require_chromium

#: no sandbox (the tests run in containers) and nothing the browser would
#: fetch on its own: the only requests are the ones a test makes
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
TIMEOUT_MS = 15_000
#: the desktop window of the page tests
DESKTOP = {"width": 1280, "height": 800}


@contextmanager
def chromium(*extra_args: str) -> Iterator[Any]:
    """A launched Chromium (``extra_args`` after ``CHROMIUM_ARGS``), closed on leaving."""
    path = require_chromium()
    playwright_sync = pytest.importorskip("playwright.sync_api")
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=[*CHROMIUM_ARGS, *extra_args])
        try:
            yield browser
        finally:
            browser.close()


def new_context(browser: Any, **options: Any) -> Any:
    """``browser.new_context(**options)`` whose waits give up after ``TIMEOUT_MS``."""
    context = browser.new_context(**options)
    context.set_default_timeout(TIMEOUT_MS)
    return context
