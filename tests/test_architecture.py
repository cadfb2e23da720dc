"""The never-rules of docs/architecture.md, checked on every test run.

1. The import contracts in pyproject.toml ([tool.importlinter]) are kept, run by
   import-linter's own `lint-imports` exactly as .ci/run runs it; and each contract
   is live: one violating import added to a copy of the package breaks it.
2. What imports cannot show: the service's ``.store`` and ``.bus`` are reached only
   inside sanic_chat/core and the composition root (rule 2, one door). A module
   holding the whole service can call around the core without importing the store.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sanic_chat"

# `lint-imports` is a console script; running its click command through this
# interpreter finds the same import-linter however the test environment was made.
LINT_IMPORTS = (
    "import sys; from importlinter.cli import lint_imports_command; "
    "sys.exit(lint_imports_command())"
)


def lint_imports(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", LINT_IMPORTS, "--no-cache", "--no-logo", *args],
        cwd=cwd,
        env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_contracts_are_kept() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout, result.stdout


# (contract id, module file under sanic_chat/, the import that breaks the contract)
VIOLATIONS = [
    ("core-independent", "core/__init__.py", "import sanic"),
    ("core-independent", "core/__init__.py", "import redis.asyncio"),
    ("core-independent", "core/__init__.py", "from .. import config"),
    ("one-door", "transports/__init__.py", "from ..store import models"),
    ("one-door", "api/__init__.py", "from ..bus import memory"),
    ("one-door", "security/__init__.py", "from ..bus import memory"),
    ("runtime-no-testing", "providers/__init__.py", "from ..testing import fake_llm"),
    ("runtime-no-testing", "transports/__init__.py", "from ..testing.fake_llm import server"),
    ("transports-no-providers", "transports/__init__.py", "from ..providers import catalog"),
    ("security-no-transports", "security/__init__.py", "from ..transports import websocket"),
    ("arrows", "store/__init__.py", "from ..bus import memory"),
    ("arrows", "bus/__init__.py", "from ..store import memory"),
    ("arrows", "providers/__init__.py", "from ..store import models"),
    ("arrows", "providers/__init__.py", "from ..transports import sse"),
    ("arrows", "store/__init__.py", "from ..api import schemas"),
    ("arrows", "core/__init__.py", "from ..transports import base"),
]


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the package and its contracts; a case edits it and restores it."""
    copy = tmp_path_factory.mktemp("architecture")
    shutil.copytree(
        PACKAGE, copy / "sanic_chat", ignore=shutil.ignore_patterns("__pycache__", "web")
    )
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    return copy


@pytest.mark.parametrize(("contract", "module", "line"), VIOLATIONS)
def test_a_violating_import_breaks_its_contract(
    package_copy: Path, contract: str, module: str, line: str
) -> None:
    path = package_copy / "sanic_chat" / module
    original = path.read_text()
    path.write_text(f"{original}\n{line}  # a violation\n")
    try:
        result = lint_imports(package_copy, "--contract", contract)
    finally:
        path.write_text(original)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 broken" in result.stdout, result.stdout
    importer = f"sanic_chat.{module.removesuffix('/__init__.py')}"
    assert importer in result.stdout, result.stdout


# -- one door: the service's store and bus ------------------------------------

#: the core and the composition root (app.py and the modules it and the CLI wire with)
MAY_REACH_STORE_AND_BUS = ("core/", "app.py", "wiring.py", "cli.py", "startup.py")

#: known violations: (module, expression) -> how many times; each line says what must move
KNOWN_DOOR_VIOLATIONS: dict[tuple[str, str], int] = {}


def _holds_the_service(node: ast.expr) -> bool:
    """`service`, `context.service`, `self._service`, ...: a name ending in service."""
    if isinstance(node, ast.Name):
        return node.id.endswith("service")
    if isinstance(node, ast.Attribute):
        return node.attr.endswith("service")
    return False


def door_violations(package: Path) -> Counter[tuple[str, str]]:
    found: Counter[tuple[str, str]] = Counter()
    for path in sorted(package.rglob("*.py")):
        module = path.relative_to(package).as_posix()
        if module.startswith(MAY_REACH_STORE_AND_BUS):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in ("store", "bus")
                and _holds_the_service(node.value)
            ):
                found[module, ast.unparse(node)] += 1
    return found


def test_the_store_and_the_bus_are_reached_only_through_the_core() -> None:
    found = door_violations(PACKAGE)
    new = {key: n for key, n in found.items() if n > KNOWN_DOOR_VIOLATIONS.get(key, 0)}
    assert not new, (
        "the store or the bus is reached around the core (docs/architecture.md, one door); "
        f"add an operation to the core instead: {new}"
    )
    gone = {key for key, n in KNOWN_DOOR_VIOLATIONS.items() if found.get(key, 0) < n}
    if gone:
        warnings.warn(
            f"fixed, so lower or delete these in KNOWN_DOOR_VIOLATIONS: {sorted(gone)}",
            stacklevel=1,
        )


def test_the_door_check_sees_a_new_violation(tmp_path: Path) -> None:
    (tmp_path / "transports").mkdir()
    (tmp_path / "transports" / "x.py").write_text(
        "async def f(context, self):\n"
        "    await context.service.store.ping()\n"
        "    await self._service.bus.ping()\n"
        "    await context.store.ping()\n"  # not the service: allowed
    )
    (tmp_path / "app.py").write_text("async def g(service):\n    await service.bus.close()\n")
    assert door_violations(tmp_path) == {
        ("transports/x.py", "context.service.store"): 1,
        ("transports/x.py", "self._service.bus"): 1,
    }


#: Sanic's and websockets' modules below their public API; only
#: sanic_chat/sanic_internals.py may import them (architecture rule 7)
_SANIC_INTERNAL_MODULES = ("sanic.server", "sanic.http", "websockets.protocol", "websockets.frames")


def _internal_imports(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        found += [
            name
            for name in names
            if any(name == m or name.startswith(m + ".") for m in _SANIC_INTERNAL_MODULES)
        ]
    return found


def test_only_sanic_internals_imports_below_sanics_api() -> None:
    offenders = {
        str(path.relative_to(ROOT)): names
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "sanic_internals.py"
        and (names := _internal_imports(ast.parse(path.read_text(), str(path))))
    }
    assert offenders == {}, (
        "only sanic_chat/sanic_internals.py may reach below Sanic's public API: "
        f"move these there {offenders}"
    )


def test_the_internals_check_sees_a_new_violation() -> None:
    tree = ast.parse("from sanic.server.protocols.http_protocol import HttpProtocol\n")
    assert _internal_imports(tree) == ["sanic.server.protocols.http_protocol"]
    assert _internal_imports(ast.parse("from sanic import Websocket\n")) == []
