"""Fixtures of the end-to-end tests: the proxy launcher (``python -m proxy`` as a real
process, from `harness.tallyd`) and a module's real carbon-cache (the ``carbon`` fixture).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.carbon import LocalCarbon
from harness.tallyd import ProxyProcess, start_proxy

ProxyLauncher = Callable[..., ProxyProcess]


@pytest.fixture
def proxy_launcher() -> ProxyLauncher:
    """`start_proxy`, for tests (they cannot import a conftest module)."""
    return start_proxy


@pytest.fixture(scope="module")
def carbon(carbon_available: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[LocalCarbon]:
    """One real carbon-cache (1 s resolution, an hour kept) for a test module."""
    cache = LocalCarbon(tmp_path_factory.mktemp("carbon"), schema="1s:1h")
    cache.start()
    try:
        yield cache
    finally:
        cache.stop()

