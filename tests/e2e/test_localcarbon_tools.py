"""tools/localcarbon.py beyond start/stop: tagged series and graphite-web.

* ``fetch`` finds a tagged series where carbon 1.1.10 put it (``_tagged/``), with the tags in
  any order (carbon sorts them).
* ``web-start`` serves graphite-web on the Whisper files; a graph of a series tallyd wrote is
  rendered as a PNG and as JSON; ``web-stop`` stops it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from harness.carbon import CARBON_DIR, LOCALCARBON, LocalCarbon, localcarbon
from harness.checkout import REPO_ROOT
from harness.client import send_udp
from harness.tallyd import start_aggregator

pytestmark = pytest.mark.e2e

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(LOCALCARBON), *args], capture_output=True,
                          text=True, timeout=120, cwd=str(REPO_ROOT))


def send_plaintext(carbon: LocalCarbon, lines: list[str]) -> None:
    with socket.create_connection(carbon.address, timeout=10) as sock:
        sock.sendall("".join(f"{line}\n" for line in lines).encode())


def test_fetch_reads_tagged_series(carbon: LocalCarbon) -> None:
    prefix = f"e2e.tag{os.getpid()}"
    now = int(time.time())
    send_plaintext(carbon, [f"{prefix}.x;zone=b;env=prod 5 {now}",
                            f"{prefix}.x;env=dev 6 {now}",
                            f"{prefix}.plain 7 {now}"])
    for metric, value in [(f"{prefix}.x;env=prod;zone=b", 5.0),  # tags in another order
                          (f"{prefix}.x;zone=b;env=prod", 5.0),
                          (f"{prefix}.x;env=dev", 6.0),
                          (f"{prefix}.plain", 7.0)]:
        points = carbon.wait_for_points(metric, lambda p, v=value: any(x == v for _, x in p),
                                        describe=f"a point equal to {value}")
        assert [v for _, v in points] == [value], (metric, points)
    tagged = carbon.whisper_file(f"{prefix}.x;env=dev")
    assert tagged.relative_to(carbon.data_dir / "storage" / "whisper").parts[0] == "_tagged"
    # The command line (what the README shows) as well as the helper.
    result = run_tool("fetch", "--data-dir", str(carbon.data_dir), f"{prefix}.x;env=prod;zone=b")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(now), "5.0"], result.stdout
    missing = run_tool("fetch", "--data-dir", str(carbon.data_dir), f"{prefix}.x;env=none")
    assert missing.returncode == 2 and "no whisper file" in missing.stderr, missing


@pytest.fixture
def graphite_available(carbon_available: Path) -> Path:
    """graphite-web in the carbon venv (tools/bootstrap); missing: skipped, failed in CI."""
    if not localcarbon.graphite_installed(CARBON_DIR):
        message = f"graphite-web is not installed in {CARBON_DIR}; run tools/bootstrap"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return CARBON_DIR


def http_get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=60) as reply:
        return reply.status, reply.headers.get_content_type(), reply.read()


def test_graphite_web_renders_series_from_tallyd(graphite_available: Path,
                                                 carbon: LocalCarbon) -> None:
    prefix = f"e2e.web{os.getpid()}"
    metric = f"stats_counts.{prefix}.hits"
    agg = start_aggregator(["--listen", "udp://127.0.0.1:0", "--carbon", carbon.endpoint,
                            "--mgmt-address", "127.0.0.1", "--mgmt-port", "0",
                            "--flush-interval", "1", "--workers", "1"])
    try:
        send_udp(agg.udp, [f"{prefix}.hits:3|c\n{prefix}.hits:4|c".encode()])
        carbon.wait_for_points(metric, lambda points: any(v == 7 for _, v in points),
                               describe="the flushed count")
    finally:
        agg.kill()
    data_dir = str(carbon.data_dir)
    started = run_tool("web-start", "--data-dir", data_dir)
    try:
        assert started.returncode == 0, started.stderr
        fields = dict(field.split("=", 1) for field in started.stdout.split())
        url = fields["url"]
        assert url.startswith("http://127.0.0.1:"), started.stdout
        again = run_tool("web-start", "--data-dir", data_dir)
        assert again.returncode == 1 and "already running" in again.stderr, again

        status, ctype, body = http_get(f"{url}render?target={metric}&from=-10min")
        assert (status, ctype) == (200, "image/png"), (status, ctype, body[:200])
        assert body.startswith(PNG_SIGNATURE) and len(body) > 1000, body[:64]

        status, ctype, body = http_get(f"{url}render?target={metric}&from=-10min&format=json")
        assert (status, ctype) == (200, "application/json"), (status, ctype, body[:200])
        [series] = json.loads(body)
        assert series["target"] == metric, series
        assert 7.0 in [value for value, _ in series["datapoints"]], series

        status, _, body = http_get(f"{url}metrics/find?query={metric.rsplit('.', 1)[0]}.*")
        assert status == 200 and b'"hits"' in body, body
    finally:
        stopped = run_tool("web-stop", "--data-dir", data_dir)
    assert stopped.returncode == 0 and "stopped pid=" in stopped.stdout, stopped
    with pytest.raises(OSError):
        http_get(f"{url}version/")
