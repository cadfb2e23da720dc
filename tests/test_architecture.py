"""The never-rules of docs/architecture.md, checked on every test run.

1. The import contracts in pyproject.toml ([tool.importlinter]) are kept, run by
   import-linter's own `lint-imports` exactly as .ci/run runs it; and each contract
   is live: one violating import added to a copy of the package breaks it.
2. What imports cannot show: the service's ``.store`` and ``.bus`` are reached only
   inside sanic_chat/core and the composition root (rule 2, one door). A module
   holding the whole service can call around the core without importing the store.
3. One composition root (rule 3): only app.py, wiring.py, cli.py, startup.py and
   config.py read the environment or a store or bus URL's scheme.
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


# -- one composition root: nothing else chooses an implementation ---------------

#: the composition root (rule 3): the only modules that read the environment or a
#: URL's scheme to choose an implementation; config.py reads the settings themselves
COMPOSITION_ROOT = ("app.py", "wiring.py", "cli.py", "startup.py", "config.py")

#: the schemes of the store's and the bus's URLs
_URL_SCHEMES = ("sqlite", "postgres", "redis", "memory:")


def _looks_at_a_scheme(node: ast.Call) -> bool:
    """``x.startswith("redis://")``, ``x.startswith(("sqlite", ...))``."""
    if not (isinstance(node.func, ast.Attribute) and node.func.attr == "startswith"):
        return False
    texts = [
        n.value
        for arg in node.args
        for n in ast.walk(arg)
        if isinstance(n, ast.Constant) and isinstance(n.value, str)
    ]
    return any(text.lower().startswith(_URL_SCHEMES) for text in texts)


def choosers(package: Path) -> list[str]:
    """``module:line what`` for each place outside the composition root that reads the
    environment (``os.environ``, ``os.getenv``, ``Settings.from_env``, the proxy
    settings) or checks a store or bus URL's scheme."""
    found: list[tuple[str, int, str]] = []
    for path in sorted(package.rglob("*.py")):
        module = path.relative_to(package).as_posix()
        if module in COMPOSITION_ROOT:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            what = None
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv"):
                what = ast.unparse(node)
            elif isinstance(node, ast.ImportFrom) and node.module == "os":
                names = {alias.name for alias in node.names} & {"environ", "getenv"}
                what = f"from os import {', '.join(sorted(names))}" if names else None
            elif isinstance(node, ast.Attribute) and node.attr in ("from_env", "getproxies"):
                what = ast.unparse(node)
            elif isinstance(node, ast.Call) and _looks_at_a_scheme(node):
                what = ast.unparse(node)
            if what is not None:
                found.append((module, node.lineno, what))
    return [f"{module}:{line} {what}" for module, line, what in sorted(found)]


def test_only_the_composition_root_chooses_implementations() -> None:
    assert choosers(PACKAGE) == [], (
        "only the composition root (app.py, wiring.py, cli.py, startup.py, config.py) reads "
        "the environment or a URL's scheme to choose an implementation "
        "(docs/architecture.md, rule 3): build the part in sanic_chat/wiring.py and hand "
        "it over ready"
    )


def test_the_chooser_check_sees_a_new_violation(tmp_path: Path) -> None:
    (tmp_path / "security").mkdir()
    (tmp_path / "security" / "guard.py").write_text(
        "import os\n"
        "from os import environ\n"
        "def f(settings, url):\n"
        '    if settings.bus_url.startswith(("redis://", "rediss://")):\n'
        "        return os.environ.get('X')\n"
        '    if url.startswith("sqlite:"):\n'
        "        return Settings.from_env()\n"
        '    return url.startswith("https://")\n'  # not a store or bus URL: allowed
    )
    (tmp_path / "wiring.py").write_text('import os\nx = os.environ.get("REDIS_URL")\n')
    assert choosers(tmp_path) == [
        "security/guard.py:2 from os import environ",
        "security/guard.py:4 settings.bus_url.startswith(('redis://', 'rediss://'))",
        "security/guard.py:5 os.environ",
        "security/guard.py:6 url.startswith('sqlite:')",
        "security/guard.py:7 Settings.from_env",
    ]
