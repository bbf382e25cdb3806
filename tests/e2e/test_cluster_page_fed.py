"""The cluster page in headless chromium, fed by hand-made /status documents (shaped per the
contract, tests/support/statusdocs.py) that small HTTP servers serve: a real ``tallyd-ring
ui`` reads them, the browser draws them. What a real cluster cannot show on demand is set
up here: a divergent membership fingerprint, a filling buffer, drops that grow, a daemon
that stops answering. (tests/e2e/test_cluster_page.py is the same page on real daemons.)"""

from __future__ import annotations

import json
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from page_helpers import (
    edges,
    nodes,
    open_browser,
    refreshes,
    save_screenshot,
    start_ui,
    text_of,
    wait_for,
)
from selenium.webdriver.common.by import By

from ringtool.ringspec import parse_ring_spec
from support.statusdocs import member, status

pytestmark = pytest.mark.e2e


class FakeDaemon:
    """An HTTP server answering ``GET /status`` with ``document`` (changed at will);
    `stop` closes it, so the next reading is refused like a dead daemon's."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps(owner.document).encode()
                self.send_response(200 if self.path == "/status" else 404)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.stopped = False

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.server.shutdown()
            self.server.server_close()


def proxy_doc(identity: str, sent: tuple[int, int], *, membership: str = "m1",
              buffered: int = 0, dropped: int = 0) -> dict[str, Any]:
    drops = {"buffer_full": dropped} if dropped else {}
    second = member("aggregator", 1, "a1:8125", sent=sent[1], buffered=buffered, dropped=drops)
    second["buffer_capacity_lines"] = 100
    return status("proxy", identity, membership=membership, lines_in=sum(sent) + buffered
                  + dropped, lines_out=sum(sent), buffered_lines=buffered,
                  dropped_lines=drops,
                  members=[member("aggregator", 0, "a0:8125", sent=sent[0]), second])


def aggregator_doc(identity: str, lines: int) -> dict[str, Any]:
    return status("aggregator", identity, membership="ring", lines_in=lines, lines_out=lines,
                  points_flushed=lines // 10, points_sent=lines // 10,
                  members=[member("carbon", 0, "c0:2003", sent=lines // 20),
                           member("carbon", 1, "c1:2003", sent=lines // 20)])


@pytest.fixture
def daemons() -> Iterator[dict[str, FakeDaemon]]:
    made = {
        "p0": FakeDaemon(proxy_doc("p0", (100, 100))),
        "p1": FakeDaemon(proxy_doc("p1", (100, 100))),
        "p2": FakeDaemon(proxy_doc("p2", (100, 100), membership="m2")),
        "a0": FakeDaemon(aggregator_doc("a0", 300)),
        "a1": FakeDaemon(aggregator_doc("a1", 300)),
    }
    try:
        yield made
    finally:
        for daemon in made.values():
            daemon.stop()


def test_page_draws_hand_made_documents_and_follows_their_changes(
        daemons: dict[str, FakeDaemon], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    ui = start_ui([daemons[p].url for p in ("p0", "p1", "p2")],
                  [daemons[a].url for a in ("a0", "a1")])
    try:
        with open_browser() as driver:
            driver.get(ui.url)
            wait_for("a first drawing", lambda: refreshes(driver) >= 1, 10, driver)
            drawn = nodes(driver)
            want = {f"proxy|{daemons[p].url}" for p in ("p0", "p1", "p2")} | {
                f"aggregator|{daemons[a].url}" for a in ("a0", "a1")} | {
                "carbon|c0:2003", "carbon|c1:2003"}
            assert set(drawn) == want
            assert all(n["state"] == "up" for n in drawn.values())
            # p2's membership fingerprint is not the other proxies': it alone is marked.
            assert {k for k, n in drawn.items() if n["diverged"]} == {
                f"proxy|{daemons['p2'].url}"}
            assert "diverged" in text_of(driver, "summary")
            assert len(edges(driver)) == 3 * 2 + 2 * 2

            # Traffic: every counter grows, p0 buffers half of a1's buffer and drops.
            for name in ("p0", "p1", "p2"):
                daemons[name].document = proxy_doc(
                    name, (150, 130), membership="m2" if name == "p2" else "m1",
                    buffered=50 if name == "p0" else 0, dropped=7 if name == "p0" else 0)
            daemons["a0"].document = aggregator_doc("a0", 450)
            before = refreshes(driver)
            p0_a1 = (f"proxy|{daemons['p0'].url}", f"aggregator|{daemons['a1'].url}")

            def grown() -> dict[str, Any] | None:
                if refreshes(driver) < before + 1:
                    return None
                edge = next(e for e in edges(driver) if (e["source"], e["target"]) == p0_a1)
                return edge if edge["sent"] == 130 and edge["rate"] else None

            edge = wait_for("the new counters drawn with a rate", grown, 10, driver)
            assert float(edge["rate"]) > 0 and "lines/s" in edge["label"]
            assert edge["buffered"] == 50 and "buf 50/100" in edge["label"]
            assert edge["dropped"] == 7 and "dropping" in edge["classes"]
            fill = driver.find_element(
                By.CSS_SELECTOR, f'#picture g.edge[data-source="{p0_a1[0]}"]'
                f'[data-target="{p0_a1[1]}"] rect.fill')
            assert float(str(fill.get_attribute("width"))) == pytest.approx(75, abs=1)
            a0 = nodes(driver)[f"aggregator|{daemons['a0'].url}"]
            assert a0["lines_in"] == "450" and "total 450" in a0["text"]
            assert "proxies sent 450, received 450" in a0["text"]
            assert text_of(driver, "between").startswith("proxies -> aggregators: sent 840")

            # a1 stops answering: drawn down (red) within 6 s, its identity kept.
            daemons["a1"].stop()
            key = f"aggregator|{daemons['a1'].url}"
            wait_for("a1 drawn down", lambda: nodes(driver)[key]["state"] == "down", 6,
                     driver)
            gone = nodes(driver)[key]
            assert "down" in gone["classes"] and "a1" in gone["text"]
            assert "connect_failed" in gone["text"]
            assert "1 unreachable" in text_of(driver, "summary")
            findings = driver.find_elements(By.CSS_SELECTOR, "#findings li.unreachable")
            assert any(daemons["a1"].url in f.text for f in findings)
            save_screenshot(driver, tmp_path, "cluster_page_fed", capsys)
            # The page server itself stops: the picture stays, marked stale.
            assert ui.stop() == 0, ui.describe()
            wait_for("the picture marked stale", lambda: "stale" in text_of(driver, "updated"),
                     6, driver)
            assert nodes(driver)[key]["state"] == "down"
        stopped = [line for line in ui.log_text(None).splitlines() if "event=stopped" in line]
        assert stopped and "readings=" in stopped[0], ui.describe()
    finally:
        ui.stop()


def test_page_from_a_ring_file_marks_the_aggregator_with_another_ring(
        daemons: dict[str, FakeDaemon], tmp_path: Path) -> None:
    ring_toml = 'carbon = ["c0:2003", "c1:2003"]\n'
    fingerprint = parse_ring_spec(tomllib.loads(ring_toml), source="ring").build_ring(
        ).fingerprint()
    for name in ("a0", "a1"):
        daemons[name].document["fingerprints"]["membership"] = (
            fingerprint if name == "a0" else "0123456789abcdef")
    ring = tmp_path / "ring.toml"
    proxies = ", ".join(f'"{daemons[p].url}"' for p in ("p0", "p1"))
    aggregators = ", ".join(f'"{daemons[a].url}"' for a in ("a0", "a1"))
    ring.write_text(f"{ring_toml}[cluster]\nproxies = [{proxies}]\n"
                    f"aggregators = [{aggregators}]\n")
    ui = start_ui([], [], extra=["--ring", str(ring)])
    try:
        with open_browser() as driver:
            driver.get(ui.url)
            wait_for("a first drawing", lambda: refreshes(driver) >= 1, 10, driver)
            drawn = nodes(driver)
            assert len([k for k in drawn if k.startswith(("proxy|", "aggregator|"))]) == 4
            # Only a1's ring differs from the ring file's (with two aggregators there is no
            # majority: the file decides).
            assert {k for k, n in drawn.items() if n["diverged"]} == {
                f"aggregator|{daemons['a1'].url}"}
            assert "\u2260 membership 0123456789ab" in drawn[
                f"aggregator|{daemons['a1'].url}"]["text"]
            row = driver.find_element(By.CSS_SELECTOR,
                                      f'#daemons tr[data-url="{daemons["a1"].url}"]')
            assert "diverged" in str(row.get_attribute("class")).split()
    finally:
        ui.stop()
