"""The LICENSE file exists and says what pyproject.toml says (MIT, the tallyd authors)."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_license_file_matches_pyproject() -> None:
    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["license"]
    assert declared == {"text": "MIT"}, declared
    text = (REPO_ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n"), text[:80]
    assert "Copyright (c) " in text and "the tallyd authors" in text
    assert "Permission is hereby granted, free of charge" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS"' in text
