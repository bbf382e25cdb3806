"""Launch helpers for tests that run ``python -m proxy`` as a real process, and a module's
real carbon-cache (the ``carbon`` fixture).

tests/support/procs.py launches aggregators and reads their ``event=listening`` /
``event=started`` log lines; the proxy logs the same lines, so its launcher is the same
class under another name.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from support.carbon import LocalCarbon
from support.procs import (
    AggregatorProcess,
    DaemonError,
    mgmt_command,
    split_host_port,
    started,
)


class ProxyProcess(AggregatorProcess):
    """``python -m proxy ...`` with its bound addresses parsed from the log."""

    name = "tallyd-proxy"

    def stats(self) -> dict[str, str]:
        """The admin ``stats`` reply as a dict."""
        reply = mgmt_command(self.mgmt, "stats")
        return dict(line.split(": ", 1) for line in reply.splitlines() if ": " in line)

    def fingerprint(self) -> str:
        for line in self.log_text(None).splitlines():
            if "event=started" in line:
                return line.split("fingerprint=", 1)[1].split()[0]
        raise DaemonError("no event=started line\n" + self.describe())


def start_proxy(args: Iterable[str], *, timeout: float = 30.0) -> ProxyProcess:
    """Start ``python -m proxy ARGS`` and wait for ``event=started``."""
    return started(ProxyProcess([sys.executable, "-m", "proxy", *args]), timeout)


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


__all__ = ["ProxyLauncher", "ProxyProcess", "split_host_port", "start_proxy"]
