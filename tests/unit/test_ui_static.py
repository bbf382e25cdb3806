"""The cluster page's static files: in the package, shipped as package data, and loading
nothing from anywhere else (no CDN, no build step)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from ringtool.ui import PAGE_FILE, STATIC_FILES, read_static

ROOT = Path(__file__).resolve().parents[2]


def test_every_file_the_server_names_is_in_the_package() -> None:
    for name in [PAGE_FILE, *(name for name, _ in STATIC_FILES.values())]:
        assert read_static(name).strip(), name


def test_static_files_are_package_data() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["package-data"]["ringtool"]
    shipped = {p.name for pattern in patterns for p in (ROOT / "ringtool").glob(pattern)}
    assert {PAGE_FILE, "ui.js", "ui.css"} <= shipped


def test_the_page_loads_only_its_own_files() -> None:
    page = read_static(PAGE_FILE).decode()
    references = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert references, "the page names its script and style"
    served = {path.lstrip("/") for path in STATIC_FILES}
    for ref in references:
        assert ref in served or ref.startswith("data:"), ref


@pytest.mark.parametrize("name", ["ui.html", "ui.js", "ui.css"])
def test_no_file_reaches_another_host(name: str) -> None:
    text = read_static(name).decode()
    # The one absolute URL allowed is the SVG namespace, which is a name, not a request.
    urls = set(re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}[^\s\"')]*", text))
    assert urls <= {"http://www.w3.org/2000/svg"}, urls
    assert "@import" not in text and "import(" not in text
