"""The layering rules of STYLE.md, checked on the source: the pure core imports no I/O."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = [
    "common/protocol.py", "common/framing.py", "common/errors.py", "common/config.py",
    "common/address.py", "common/mgmt.py", "common/jsnum.py", "common/ring.py",
    "aggregator/ledger.py", "aggregator/timers.py", "aggregator/backends/render.py",
    "aggregator/config.py", "aggregator/etsyconfig.py", "aggregator/backends/placement.py",
    "aggregator/workers/codec.py", "common/shard.py", "common/auth.py",
    "proxy/routing.py", "proxy/membership.py", "proxy/config.py",
]
FORBIDDEN = {"trio", "socket", "time", "logging", "os", "asyncio", "select", "threading"}
SHELL_MODULES = ("server", "listener", "flusher", "admin_server", "signals", "cli", "netstat",
                 "backends.sender", "backends.console")


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add("." + node.module)
    return names


@pytest.mark.parametrize("module", CORE)
def test_core_module_imports_no_io(module: str) -> None:
    imported = imports_of(ROOT / module)
    bad = {name for name in imported if name.split(".")[0] in FORBIDDEN}
    assert not bad, f"{module} is pure core but imports {sorted(bad)}"
    shell = {name for name in imported
             if any(name.endswith(s) or name.endswith("." + s) for s in SHELL_MODULES)}
    assert not shell, f"{module} is pure core but imports shell modules {sorted(shell)}"


@pytest.mark.parametrize(("package", "other"), [("proxy", "aggregator"), ("aggregator", "proxy")])
def test_roles_do_not_import_each_other(package: str, other: str) -> None:
    for path in (ROOT / package).rglob("*.py"):
        assert not any(name.split(".")[0] == other for name in imports_of(path)), path


def test_common_imports_neither_role() -> None:
    for path in (ROOT / "common").rglob("*.py"):
        assert not any(n.split(".")[0] in ("proxy", "aggregator") for n in imports_of(path)), path
