"""Fixtures shared by every test layer.

Nothing here binds a fixed port: sinks and daemons use port 0 or a port found free on 127.0.0.1.
The reference Etsy statsd and carbon-cache are installed by ``tools/bootstrap --test``; tests that
need them skip when they are missing, except under CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.carbon import CARBON_DIR, carbon_installed
from harness.checkout import REPO_ROOT
from harness.etsy import ETSY_STATS_JS, etsy_installed, node_binary
from harness.sink import GraphiteSink


def _require(what: str, available: bool, detail: str) -> None:
    """Skip (or, under CI, fail) when a tool installed by tools/bootstrap is missing."""
    if available:
        return
    message = f"{what} is not available ({detail}); run tools/bootstrap --test"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The checkout's root directory (the one holding pyproject.toml)."""
    assert (REPO_ROOT / "pyproject.toml").is_file(), REPO_ROOT
    return REPO_ROOT


@pytest.fixture(scope="session")
def etsy_available() -> Path:
    """The reference Etsy statsd's stats.js; skips (fails under CI) if it or node is missing."""
    _require(
        "the reference Etsy statsd",
        etsy_installed(),
        f"stats.js: {ETSY_STATS_JS} {'found' if ETSY_STATS_JS.is_file() else 'missing'}, "
        f"node: {node_binary() or 'missing'}",
    )
    return ETSY_STATS_JS


@pytest.fixture(scope="session")
def carbon_available() -> Path:
    """The carbon venv (.cache/carbon); skips (fails under CI) if it is missing."""
    _require("carbon-cache", carbon_installed(), f"{CARBON_DIR} has no .ok stamp")
    return CARBON_DIR


@pytest.fixture
def graphite_sink() -> Iterator[GraphiteSink]:
    """A Graphite plaintext sink on 127.0.0.1:<free port>, closed after the test."""
    with GraphiteSink() as sink:
        yield sink


_CONFORMANCE_SCHEDULE = pytest.StashKey[list[str]]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Record the order in which conformance cases will use daemon pairs (for prefetching)."""
    schedule = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        case = callspec.params.get("case") if callspec is not None else None
        key = getattr(case, "pair_key", None)
        if isinstance(key, str):
            schedule.append(key)
    config.stash[_CONFORMANCE_SCHEDULE] = schedule


@pytest.fixture(scope="session")
def conformance_runner(request: pytest.FixtureRequest, etsy_available: Path) -> Iterator[object]:
    """The differential harness (tests/conformance/harness.py), shared by the whole session."""
    from conformance.harness import ConformanceRunner

    runner = ConformanceRunner(request.config.stash.get(_CONFORMANCE_SCHEDULE, []))
    try:
        yield runner
    finally:
        runner.close()
