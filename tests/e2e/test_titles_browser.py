"""Conversation titles are users' text: in a real browser (Chromium, driven by
Playwright) against a real server, a title with a right-to-left override cannot
show as something else ("\\u202Egnp.exe" read as "exe.png"), and titles are
bidi-isolated from what is beside them (issue 17, item 7)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.browser import DESKTOP, new_context
from tests.server import RunningServer, demo_models_file, run_server

pytestmark = pytest.mark.browser

pytest.importorskip("playwright.sync_api")

SPOOF = "\u202egnp.exe"  # shows as "exe.png" when the override is obeyed


# ``chromium_path`` and ``browser`` come from tests/e2e/conftest.py


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, chromium_path: str) -> Iterator[RunningServer]:
    models = demo_models_file(tmp_path_factory.mktemp("models"))
    with run_server({"SANIC_CHAT_MODELS": models}) as running:
        yield running


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = new_context(browser, viewport=DESKTOP)
    yield context.new_page()
    context.close()


def create_conversation(server: RunningServer, title: str) -> str:
    response = httpx.post(f"{server.base_url}/api/v1/conversations", json={"title": title})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


#: where each of two characters of an element's text is drawn: the left edge of its glyph
GLYPH_LEFT = """(el, [first, second]) => {
    const node = el.firstChild;
    const left = (ch) => {
        const i = node.data.indexOf(ch);
        const range = document.createRange();
        range.setStart(node, i);
        range.setEnd(node, i + 1);
        return range.getBoundingClientRect().left;
    };
    return [left(first), left(second)];
}"""


def reads_left_to_right(element: Any, first: str, second: str) -> bool:
    """``first`` is drawn left of ``second`` (as in "gnp.exe"; "exe.png" has it reversed)."""
    left_first, left_second = element.evaluate(GLYPH_LEFT, [first, second])
    return bool(left_first < left_second)


def test_a_title_with_a_right_to_left_override_reads_as_written(
    server: RunningServer, page: Any
) -> None:
    conversation_id = create_conversation(server, SPOOF)
    page.goto(f"{server.base_url}/#/c/{conversation_id}")
    item = page.locator(f'li[data-id="{conversation_id}"] .conv-title')
    item.wait_for()
    heading = page.locator("#title")
    page.wait_for_function("() => document.querySelector('#title').textContent.includes('gnp')")
    for element in (item.element_handle(), heading.element_handle()):
        assert reads_left_to_right(element, "g", "x"), element.evaluate("e => e.textContent")
        assert "\u202e" not in element.evaluate("e => e.textContent")
    assert "\u202e" not in page.title()
    # the stored title is the user's, unchanged
    stored = httpx.get(f"{server.base_url}/api/v1/conversations/{conversation_id}").json()
    assert stored["title"] == SPOOF


def test_titles_are_isolated_from_their_neighbours(server: RunningServer, page: Any) -> None:
    conversation_id = create_conversation(server, "שלום 12")
    page.goto(f"{server.base_url}/#/c/{conversation_id}")
    item = page.locator(f'li[data-id="{conversation_id}"] .conv-title')
    item.wait_for()
    page.wait_for_function("() => document.querySelector('#title').textContent.includes('12')")
    for element in (item, page.locator("#title")):
        assert element.get_attribute("dir") == "auto"
        assert element.evaluate("e => getComputedStyle(e).unicodeBidi") == "isolate"
