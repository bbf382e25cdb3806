"""The layering rules of STYLE.md, checked on the source of every tallyd package.

**The declaration.** Each module's layer (``core``, ``shell`` or ``entry``) is declared once, in
pyproject.toml under ``[tool.tallyd.layers]``, one ``"module" = "layer"`` line per module of
common/, proxy/, aggregator/, ringtool/ and harness/ (a package is named by its own name, for
its ``__init__.py``). pyproject.toml is where a module's package is already registered
(setuptools' package list, mypy's packages), so whoever adds a module finds the declaration
beside those lists; one line per module keeps parallel branches' additions apart when they
merge; tomllib reads it without a new dependency; and a TOML table cannot hold a key twice. A
module missing from it, an entry naming no module, or an unknown layer fails here: a layer is
never guessed from a file name or a docstring.

**The rules.** Every import counts, absolute or relative (``from . import x`` included),
at module level, inside a function or under ``if TYPE_CHECKING:``: each one is a dependency
of the importing module's source. An import names the module it reaches (``from .config
import X`` in ``proxy.mgmt`` is ``proxy.config``; ``from . import codec`` in
``aggregator.workers.exchange`` is ``aggregator.workers.codec``).

* core imports no I/O or clock module (`IO_MODULES`) and no shell or entry module, and calls
  no I/O builtin (`IO_BUILTINS`: ``open``, ``print``, ``input``);
* shell imports no entry module;
* a role (proxy, aggregator, ringtool) imports only itself and common, so roles never import
  each other; common imports only common;
* harness imports only itself and common: it launches the daemons as processes, and its
  model of the semantics must stay independent of theirs;
* nothing imports tests (``tests.*``, nor tests/support by its ``sys.path`` name ``support``);
* nothing imports the checkout's bench/ or tools/ (scripts, not packages of the product);
* no two modules import each other, directly or through others (a cycle is named).

The checker is proved to fail: `test_the_checker_reports_each_planted_violation` plants one
violation at a time in a temporary tree and asserts it is the one reported.
"""

from __future__ import annotations

import ast
import tomllib
from collections import deque
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Final, NamedTuple

import pytest

ROOT: Final = Path(__file__).resolve().parents[2]
PACKAGES: Final = ("common", "proxy", "aggregator", "ringtool", "harness")
ROLES: Final = ("proxy", "aggregator", "ringtool")
LAYERS: Final = ("core", "shell", "entry")
#: The project packages each package may import besides itself.
MAY_IMPORT: Final[Mapping[str, frozenset[str]]] = {
    "common": frozenset(),
    "proxy": frozenset({"common"}),
    "aggregator": frozenset({"common"}),
    "ringtool": frozenset({"common"}),
    "harness": frozenset({"common"}),
}
#: Modules that do I/O or read the clock, forbidden in the core (matched on the top-level name).
IO_MODULES: Final = frozenset({
    "asyncio", "concurrent", "ctypes", "datetime", "fcntl", "glob", "http", "importlib", "io",
    "logging", "mmap", "multiprocessing", "os", "pathlib", "resource", "select", "selectors",
    "shutil", "signal", "socket", "socketserver", "sqlite3", "ssl", "subprocess", "tempfile",
    "termios", "threading", "time", "trio", "urllib",
})
#: Builtins that do I/O, which core code never calls.
IO_BUILTINS: Final = frozenset({"open", "print", "input"})
#: Checkout folders that are not packages of the product: nothing imports them.
OUTSIDE: Final = frozenset({"bench", "tools"})

#: How test code is imported: as ``tests.*``, and, since pytest puts tests/ on ``sys.path``,
#: tests/support as ``support`` and the fixtures as ``conftest``.
TEST_PACKAGES: Final = frozenset({"tests", "support", "conftest"})

RULE_IO: Final = "core imports no I/O module"
RULE_CORE: Final = "core imports no shell or entry module"
RULE_SHELL: Final = "shell imports no entry module"
RULE_PACKAGES: Final = {
    "common": "common imports only common",
    "proxy": "a role imports only itself and common",
    "aggregator": "a role imports only itself and common",
    "ringtool": "a role imports only itself and common",
    "harness": "harness imports only itself and common",
}
RULE_TESTS: Final = "nothing imports tests"
RULE_OUTSIDE: Final = "nothing imports bench or tools"
RULE_BUILTIN: Final = "core calls no I/O builtin"


class Violation(NamedTuple):
    """One import that breaks a rule."""

    rule: str
    importer: str
    imported: str

    def __str__(self) -> str:
        verb = "calls" if self.rule == RULE_BUILTIN else "imports"
        return f"{self.importer} {verb} {self.imported}: {self.rule}"


def find_modules(root: Path) -> dict[str, Path]:
    """Every module of the tallyd packages under ``root``, by dotted name."""
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def read_declaration(pyproject: Path) -> dict[str, str]:
    """The ``[tool.tallyd.layers]`` table: module -> layer."""
    document = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    layers: dict[str, str] = document["tool"]["tallyd"]["layers"]
    return layers


def resolve_base(module: str, *, is_package: bool, level: int, name: str | None) -> str:
    """The module a ``from`` import starts from: ``name`` itself, or resolved against the
    package of ``module`` for a relative import (``level`` dots).

    Raises:
        ValueError: for a relative import that climbs above the top-level package.
    """
    if level == 0:
        assert name is not None
        return name
    package = module.split(".") if is_package else module.split(".")[:-1]
    if level - 1 >= len(package):
        raise ValueError(f"{module}: relative import with {level} dots leaves the package")
    anchor = package[: len(package) - (level - 1)]
    return ".".join([*anchor, name] if name else anchor)


def parse_imports(
    module: str, source: str, *, is_package: bool, modules: Collection[str]
) -> set[str]:
    """The modules ``source`` (the text of ``module``) imports, every import resolved.

    ``from a import b`` names ``a.b`` when that is a module of ``modules``, else ``a``.
    """
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = resolve_base(module, is_package=is_package, level=node.level, name=node.module)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                imported.add(submodule if submodule in modules else base)
    imported.discard("__future__")
    return imported


def build_graph(modules: Mapping[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules it imports, for every module of ``modules``."""
    return {
        name: parse_imports(name, path.read_text(encoding="utf-8"),
                            is_package=path.name == "__init__.py", modules=modules)
        for name, path in modules.items()
    }


def find_violations(graph: Mapping[str, set[str]], layers: Mapping[str, str]) -> list[Violation]:
    """Every import of ``graph`` that breaks a rule, given each module's layer."""
    found: list[Violation] = []
    for importer in sorted(graph):
        layer = layers.get(importer)
        package = importer.split(".")[0]
        for imported in sorted(graph[importer]):
            top = imported.split(".")[0]
            if top in TEST_PACKAGES:
                found.append(Violation(RULE_TESTS, importer, imported))
            elif top in OUTSIDE:
                found.append(Violation(RULE_OUTSIDE, importer, imported))
            elif top in PACKAGES:
                if top != package and top not in MAY_IMPORT[package]:
                    found.append(Violation(RULE_PACKAGES[package], importer, imported))
                imported_layer = layers.get(imported)
                if layer == "core" and imported_layer in ("shell", "entry"):
                    found.append(Violation(RULE_CORE, importer, imported))
                elif layer == "shell" and imported_layer == "entry":
                    found.append(Violation(RULE_SHELL, importer, imported))
            elif layer == "core" and top in IO_MODULES:
                found.append(Violation(RULE_IO, importer, imported))
    return found


def find_builtin_io(modules: Mapping[str, Path], layers: Mapping[str, str]) -> list[Violation]:
    """Every call of an I/O builtin (`IO_BUILTINS`) in a core module."""
    found: list[Violation] = []
    for name in sorted(modules):
        if layers.get(name) != "core":
            continue
        tree = ast.parse(modules[name].read_text(encoding="utf-8"))
        calls = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call)
                 and isinstance(node.func, ast.Name) and node.func.id in IO_BUILTINS}
        found += [Violation(RULE_BUILTIN, name, f"{call}()") for call in sorted(calls)]
    return found


def find_reachable(graph: Mapping[str, set[str]], start: str) -> set[str]:
    """The modules of ``graph`` that ``start`` reaches through one import or more."""
    seen: set[str] = set()
    queue = deque([start])
    while queue:
        for imported in graph[queue.popleft()]:
            if imported in graph and imported not in seen:
                seen.add(imported)
                queue.append(imported)
    return seen


def find_shortest_cycle(graph: Mapping[str, set[str]], start: str) -> list[str]:
    """The shortest import chain from ``start`` back to itself (``start`` is on a cycle)."""
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        current = queue.popleft()
        for imported in sorted(graph[current]):
            if imported == start:
                chain = [current]
                while chain[-1] != start:
                    chain.append(parent[chain[-1]])
                return [*reversed(chain), start]
            if imported in graph and imported not in parent:
                parent[imported] = current
                queue.append(imported)
    raise ValueError(f"{start} is on no cycle")


def find_cycles(graph: Mapping[str, set[str]]) -> list[str]:
    """One line per group of modules that import each other: its shortest cycle, and the
    whole group when it is larger than that cycle."""
    reach = {name: find_reachable(graph, name) for name in graph}
    cycles: list[str] = []
    placed: set[str] = set()
    for name in sorted(graph):
        if name in placed or name not in reach[name]:
            continue
        group = {other for other in reach[name] if name in reach[other]}
        placed |= group
        cycle = find_shortest_cycle(graph, name)
        line = "import cycle: " + " -> ".join(cycle)
        if len(group) > len(set(cycle)):
            line += f" (one of the cycles among {', '.join(sorted(group))})"
        cycles.append(line)
    return cycles


def check_declaration(modules: Collection[str], layers: Mapping[str, str]) -> list[str]:
    """What is wrong with the declaration: modules it misses, entries naming no module, and
    layers that are not one of `LAYERS`."""
    problems = [f"{name} is not declared in [tool.tallyd.layers]"
                for name in sorted(set(modules) - set(layers))]
    problems += [f"{name} is declared in [tool.tallyd.layers] but is no module"
                 for name in sorted(set(layers) - set(modules))]
    problems += [f"{name}: unknown layer {layer!r} (one of {', '.join(LAYERS)})"
                 for name, layer in sorted(layers.items()) if layer not in LAYERS]
    return problems


def check_tree(root: Path) -> list[str]:
    """Everything the checker finds wrong in the tree at ``root``, one line each."""
    modules = find_modules(root)
    layers = read_declaration(root / "pyproject.toml")
    graph = build_graph(modules)
    problems = check_declaration(modules, layers)
    problems += [str(violation) for violation in find_violations(graph, layers)]
    problems += [str(violation) for violation in find_builtin_io(modules, layers)]
    return problems + find_cycles(graph)


MODULES: Final = find_modules(ROOT)
DECLARED: Final = read_declaration(ROOT / "pyproject.toml")
GRAPH: Final = build_graph(MODULES)
VIOLATIONS: Final = find_violations(GRAPH, DECLARED) + find_builtin_io(MODULES, DECLARED)


def list_violations(*rules: str) -> str:
    """The violations of ``rules`` in the tree, one per line (empty when there are none)."""
    return "\n".join(str(violation) for violation in VIOLATIONS if violation.rule in rules)


def test_every_module_is_declared() -> None:
    missing = sorted(set(MODULES) - set(DECLARED))
    assert not missing, f"add to [tool.tallyd.layers] in pyproject.toml: {missing}"


def test_the_declaration_names_only_modules_with_known_layers() -> None:
    stale = sorted(set(DECLARED) - set(MODULES))
    assert not stale, f"no such module, remove from [tool.tallyd.layers]: {stale}"
    unknown = {name: layer for name, layer in DECLARED.items() if layer not in LAYERS}
    assert not unknown, f"layers are one of {LAYERS}: {unknown}"


@pytest.mark.parametrize("module", sorted(name for name, layer in DECLARED.items()
                                          if layer == "core" and name in MODULES))
def test_core_module_imports_no_io(module: str) -> None:
    bad = [str(v) for v in VIOLATIONS
           if v.importer == module and v.rule in (RULE_IO, RULE_CORE, RULE_BUILTIN)]
    assert not bad, f"{module} is pure core: {bad}"


def test_shell_modules_import_no_entry_module() -> None:
    problems = list_violations(RULE_SHELL)
    assert not problems, problems


@pytest.mark.parametrize("package", ROLES)
def test_roles_do_not_import_each_other(package: str) -> None:
    bad = [str(v) for v in VIOLATIONS
           if v.rule == RULE_PACKAGES[package] and v.importer.split(".")[0] == package]
    assert not bad, "\n".join(bad)


def test_common_imports_neither_role() -> None:
    problems = list_violations(RULE_PACKAGES["common"])
    assert not problems, problems


def test_harness_imports_common_only() -> None:
    problems = list_violations(RULE_PACKAGES["harness"])
    assert not problems, problems


def test_nothing_imports_tests() -> None:
    problems = list_violations(RULE_TESTS)
    assert not problems, problems


def test_nothing_imports_bench_or_tools() -> None:
    problems = list_violations(RULE_OUTSIDE)
    assert not problems, problems


def test_no_import_cycles() -> None:
    cycles = find_cycles(GRAPH)
    assert not cycles, "\n".join(cycles)


SOURCE_MODULES: Final = frozenset({
    "common", "common.logging", "common.errors", "aggregator", "aggregator.ledger",
    "aggregator.workers", "aggregator.workers.codec", "proxy", "proxy.server",
})


@pytest.mark.parametrize(
    ("module", "is_package", "source", "expected"),
    [
        ("common.protocol", False, "from .logging import log_event", {"common.logging"}),
        ("common.protocol", False, "from . import logging", {"common.logging"}),
        ("common.protocol", False, "from . import errors, nothing", {"common.errors", "common"}),
        ("aggregator.workers.exchange", False, "from ..ledger import Accumulator",
         {"aggregator.ledger"}),
        ("aggregator.workers.exchange", False, "from . import codec", {"aggregator.workers.codec"}),
        ("aggregator.workers.exchange", False, "from .. import ledger", {"aggregator.ledger"}),
        ("aggregator.workers", True, "from . import codec", {"aggregator.workers.codec"}),
        ("aggregator.workers", True, "from .codec import pack", {"aggregator.workers.codec"}),
        ("aggregator.workers", True, "from .. import ledger", {"aggregator.ledger"}),
        ("proxy.routing", False, "from common.errors import ConfigError", {"common.errors"}),
        ("proxy.routing", False, "import common.logging as log", {"common.logging"}),
        ("proxy.routing", False, "from common import errors", {"common.errors"}),
        ("proxy.routing", False, "import os.path, trio", {"os.path", "trio"}),
        ("proxy.routing", False, "from __future__ import annotations", set()),
        ("proxy.routing", False,
         "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .server import Proxy",
         {"typing", "proxy.server"}),
        ("proxy.routing", False, "def route() -> None:\n    from . import server",
         {"proxy.server"}),
    ],
)
def test_imports_resolve_to_the_module_they_name(
    module: str, is_package: bool, source: str, expected: set[str]
) -> None:
    assert parse_imports(module, source, is_package=is_package, modules=SOURCE_MODULES) == expected


@pytest.mark.parametrize(("module", "is_package", "level"),
                         [("common.protocol", False, 2), ("common", True, 2),
                          ("aggregator.workers.codec", False, 4)])
def test_a_relative_import_above_the_package_is_refused(
    module: str, is_package: bool, level: int
) -> None:
    with pytest.raises(ValueError, match="leaves the package"):
        resolve_base(module, is_package=is_package, level=level, name="x")


#: A small tree that breaks no rule; each planted case changes it in one place.
CLEAN_TREE: Final = {
    "common/__init__.py": "",
    "common/errors.py": "class Error(Exception):\n    pass\n",
    "common/pure.py": "from .errors import Error\n",
    "common/net.py": "import socket\n\nimport trio\n\nfrom . import pure\n",
    "proxy/__init__.py": "",
    "proxy/routing.py": "from common import pure\n",
    "proxy/server.py": "import trio\n\nfrom common.net import trio as t\nfrom . import routing\n",
    "proxy/cli.py": "import sys\n\nfrom .server import routing\n",
    "aggregator/__init__.py": "",
    "aggregator/ledger.py": "import sys\n\nfrom common.errors import Error\n",
    "harness/__init__.py": "",
    "harness/sink.py": "import socket\n\nfrom common.net import pure\n",
}
CLEAN_LAYERS: Final = {
    "common": "core", "common.errors": "core", "common.pure": "core", "common.net": "shell",
    "proxy": "core", "proxy.routing": "core", "proxy.server": "shell", "proxy.cli": "entry",
    "aggregator": "core", "aggregator.ledger": "core", "harness": "core", "harness.sink": "shell",
}


def plant(root: Path, files: Mapping[str, str], layers: Mapping[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    table = "".join(f'"{name}" = "{layer}"\n' for name, layer in layers.items())
    (root / "pyproject.toml").write_text("[tool.tallyd.layers]\n" + table)


def test_the_checker_passes_the_clean_tree(tmp_path: Path) -> None:
    plant(tmp_path, CLEAN_TREE, CLEAN_LAYERS)
    assert check_tree(tmp_path) == []


@pytest.mark.parametrize(
    ("files", "layers", "expected"),
    [
        pytest.param(
            {"common/pure.py": "from .net import pure\n"}, {},
            ["common.pure imports common.net: " + RULE_CORE, "import cycle: common.net -> "
             "common.pure -> common.net"], id="core-imports-shell-relatively"),
        pytest.param(
            {"proxy/routing.py": "from . import server\n"}, {},
            ["proxy.routing imports proxy.server: " + RULE_CORE,
             "import cycle: proxy.routing -> proxy.server -> proxy.routing"],
            id="core-imports-shell-from-dot"),
        pytest.param(
            {"aggregator/ledger.py": "def now() -> float:\n    import time\n    return 0.0\n"},
            {}, ["aggregator.ledger imports time: " + RULE_IO], id="core-imports-the-clock"),
        pytest.param(
            {"common/pure.py": "import os.path\n"}, {}, ["common.pure imports os.path: " + RULE_IO],
            id="core-imports-os"),
        pytest.param(
            {"common/pure.py": "import io\nimport datetime\nfrom importlib import metadata\n"},
            {}, ["common.pure imports datetime: " + RULE_IO, "common.pure imports importlib: "
                 + RULE_IO, "common.pure imports io: " + RULE_IO], id="core-imports-io-date"),
        pytest.param(
            {"common/pure.py": "def read(path: str) -> str:\n    print(path)\n"
                               "    return open(path).read()\n"}, {},
            ["common.pure calls open(): " + RULE_BUILTIN,
             "common.pure calls print(): " + RULE_BUILTIN], id="core-calls-open-and-print"),
        pytest.param(
            {"harness/sink.py": "from bench import report\nimport tools.localcarbon\n"}, {},
            ["harness.sink imports bench: " + RULE_OUTSIDE,
             "harness.sink imports tools.localcarbon: " + RULE_OUTSIDE],
            id="imports-bench-or-tools"),
        pytest.param(
            {"harness/sink.py": "from common import net\nfrom proxy import routing\n"},
            {}, ["harness.sink imports proxy.routing: " + RULE_PACKAGES["harness"]],
            id="harness-imports-a-role"),
        pytest.param(
            {"common/net.py": "import trio\nfrom proxy import routing\n"}, {},
            ["common.net imports proxy.routing: " + RULE_PACKAGES["common"]],
            id="common-imports-a-role"),
        pytest.param(
            {"proxy/server.py": "from .cli import routing\n"}, {},
            ["proxy.server imports proxy.cli: " + RULE_SHELL,
             "import cycle: proxy.cli -> proxy.server -> proxy.cli"], id="shell-imports-entry"),
        pytest.param(
            {"proxy/routing.py": "from aggregator.ledger import Error\n"}, {},
            ["proxy.routing imports aggregator.ledger: " + RULE_PACKAGES["proxy"]],
            id="a-role-imports-another"),
        pytest.param(
            {"harness/sink.py": "from tests.support import procs\n"}, {},
            ["harness.sink imports tests.support: " + RULE_TESTS], id="imports-tests"),
        pytest.param(
            {"proxy/server.py": "from support.procs import free_port\n"}, {},
            ["proxy.server imports support.procs: " + RULE_TESTS],
            id="imports-tests-support-by-its-path-name"),
        pytest.param(
            {"aggregator/a.py": "from . import b\n", "aggregator/b.py": "from .c import x\n",
             "aggregator/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                "    from .a import y\n"},
            {"aggregator.a": "core", "aggregator.b": "core", "aggregator.c": "core"},
            ["import cycle: aggregator.a -> aggregator.b -> aggregator.c -> aggregator.a"],
            id="a-cycle-through-type-checking"),
        pytest.param(
            {"common/extra.py": ""}, {}, ["common.extra is not declared in [tool.tallyd.layers]"],
            id="an-undeclared-module"),
        pytest.param(
            {}, {"common.gone": "core"},
            ["common.gone is declared in [tool.tallyd.layers] but is no module"],
            id="a-stale-entry"),
        pytest.param(
            {}, {"common.pure": "pure"},
            ["common.pure: unknown layer 'pure' (one of core, shell, entry)"],
            id="an-unknown-layer"),
    ],
)
def test_the_checker_reports_each_planted_violation(
    tmp_path: Path, files: Mapping[str, str], layers: Mapping[str, str], expected: list[str]
) -> None:
    plant(tmp_path, {**CLEAN_TREE, **files}, {**CLEAN_LAYERS, **layers})
    assert check_tree(tmp_path) == expected
