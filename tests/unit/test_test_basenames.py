"""Every test module's file name is unique across tests/: pytest imports test modules by
their basename (there are no packages under tests/), so a second ``test_x.py`` in another
directory stops the whole suite at collection ("import file mismatch")."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent


def test_no_two_test_modules_share_a_basename() -> None:
    where: dict[str, list[str]] = defaultdict(list)
    for path in TESTS.rglob("test_*.py"):
        where[path.name].append(str(path.relative_to(TESTS)))
    assert len(where) > 100  # the walk found the suite
    assert {name: paths for name, paths in where.items() if len(paths) > 1} == {}
