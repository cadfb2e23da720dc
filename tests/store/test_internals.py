"""The store's reach below its libraries' public API (``store/internals.py``) is
version-gated: it was read against the versions in ``CHECKED_AGAINST``, which
``pyproject.toml`` pins. Installing another version fails here first, with what
to re-check, instead of somewhere deep in a pool under load."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import pytest

from sanic_chat.store.internals import CHECKED_AGAINST

ROOT = Path(__file__).resolve().parents[2]


def _release(text: str) -> tuple[int, ...]:
    """The leading numbers of a version (``4.3.0`` -> (4, 3, 0); ``2.1.0rc1`` -> (2, 1, 0))."""
    return tuple(int(part) for part in re.findall(r"\d+", text.split("+")[0])[:3])


@pytest.mark.parametrize("package", sorted(CHECKED_AGAINST))
def test_installed_versions_are_the_ones_the_internals_were_checked_against(package: str) -> None:
    lowest, too_new = CHECKED_AGAINST[package]
    installed = version(package)
    assert _release(lowest) <= _release(installed) < _release(too_new), (
        f"{package} {installed} is outside [{lowest}, {too_new}), the range "
        "sanic_chat/store/internals.py was checked against: re-read every piece its header "
        f"lists against {package} {installed}, then update CHECKED_AGAINST and the pin in "
        "pyproject.toml"
    )


@pytest.mark.parametrize("package", sorted(CHECKED_AGAINST))
def test_pyproject_pins_the_checked_range(package: str) -> None:
    lowest, too_new = CHECKED_AGAINST[package]
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"{package}>={lowest},<{too_new}"' in pyproject, (
        f"pyproject.toml must pin {package}>={lowest},<{too_new} (store/internals.py)"
    )
