"""The project's top-level packages must be imported from this checkout.

``common``, ``proxy`` and ``aggregator`` are generic names, and PyPI has distributions with those
names. If one of them were installed into the venv it could shadow ours without any error.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("package", ["common", "proxy", "aggregator"])
def test_package_imported_from_repository(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__file__ is not None, f"{package} is a namespace package, not ours"
    location = Path(module.__file__).resolve()
    assert location.is_relative_to(REPO_ROOT), (
        f"{package} is imported from {location}, outside the checkout {REPO_ROOT}: "
        f"another distribution named {package!r} shadows ours"
    )
    assert location.parent == REPO_ROOT / package, location
