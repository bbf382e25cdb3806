"""What the cluster page's browser tests share: ``tallyd-ring ui`` as a real process, Debian's
headless chromium driven by selenium, waits on what the page shows, and the screenshot saved
as the test's artifact.

Chromium and chromedriver come from ``tools/bootstrap --test`` (Debian's ``chromium`` and
``chromium-driver``); without them the tests fail and say so, they are never skipped.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from harness.tallyd import TallydProcess

#: Where Debian puts them (chromium's package and chromium-driver's).
CHROMIUM_NAMES = ("chromium", "chromium-browser")
CHROMEDRIVER_NAMES = ("chromedriver",)
WINDOW = "1400,1000"

T = TypeVar("T")


class UIProcess(TallydProcess):
    """``python -m ringtool ui ...`` (it logs ``event=listening kind=http`` like a daemon)."""

    name = "tallyd-ring ui"

    @property
    def url(self) -> str:
        return f"http://{self.address('http')}/"


def start_ui(proxies: Sequence[str], aggregators: Sequence[str], *,
             extra: Sequence[str] = ()) -> UIProcess:
    argv = [sys.executable, "-m", "ringtool", "ui", "--listen", "127.0.0.1:0"]
    if proxies:
        argv += ["--proxy", *proxies]
    if aggregators:
        argv += ["--aggregator", *aggregators]
    ui = UIProcess([*argv, *extra])
    ui.wait_started(20.0)
    return ui


def find_program(names: Sequence[str]) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(f"none of {', '.join(names)} is installed: run tools/bootstrap --test "
                "(it installs Debian's chromium and chromium-driver)")


@contextmanager
def open_browser() -> Iterator[WebDriver]:
    """Headless chromium (Debian's, with its own chromedriver: nothing is downloaded)."""
    options = webdriver.ChromeOptions()
    options.binary_location = find_program(CHROMIUM_NAMES)
    # --no-sandbox: CI runs as root, where chromium refuses its sandbox;
    # --disable-dev-shm-usage: a small /dev/shm in containers crashes tabs otherwise.
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--disable-gpu", f"--window-size={WINDOW}"):
        options.add_argument(flag)
    service = Service(executable_path=find_program(CHROMEDRIVER_NAMES))
    try:
        driver = webdriver.Chrome(service=service, options=options)
    except WebDriverException as exc:
        pytest.fail(f"headless chromium did not start: {exc.msg}")
    try:
        yield driver
    finally:
        driver.quit()


def artifact_dir(tmp_path: Path) -> Path:
    """``$TALLYD_ARTIFACTS`` when set (CI keeps it), else the test's tmp_path."""
    base = os.environ.get("TALLYD_ARTIFACTS")
    path = Path(base) if base else tmp_path
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_screenshot(driver: WebDriver, tmp_path: Path, name: str,
                    capsys: pytest.CaptureFixture[str]) -> Path:
    """The page as a PNG in `artifact_dir`; its path is printed past pytest's capture, so
    that a passing run shows it too."""
    path = artifact_dir(tmp_path) / f"{name}.png"
    assert driver.save_screenshot(str(path)), f"no screenshot written to {path}"
    assert path.stat().st_size > 1000, f"{path}: an empty picture"
    with capsys.disabled():
        print(f"\nscreenshot: {path}")
    return path


def wait_for(what: str, probe: Callable[[], T | None], timeout: float,
             driver: WebDriver | None = None, interval: float = 0.1) -> T:
    """``probe()``'s first true value within ``timeout`` seconds; else fail, with the page's
    summary and browser log when a ``driver`` is given."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
        except StaleElementReferenceException:  # the page redrew under the probe
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            detail = ""
            if driver is not None:
                detail = "\npage summary: " + text_of(driver, "summary") + \
                    "\nbrowser log: " + repr(driver.get_log("browser"))[:2000]
            pytest.fail(f"{what}: not within {timeout}s{detail}")
        time.sleep(interval)


def text_of(driver: WebDriver, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def nodes(driver: WebDriver) -> dict[str, dict[str, Any]]:
    """Every node of the picture by its key (``proxy|URL``, ``aggregator|URL``,
    ``carbon|NAME``): its state, whether it is marked diverged, lines in, and its text."""
    found = {}
    for node in driver.find_elements(By.CSS_SELECTOR, "#picture g.node"):
        found[str(node.get_attribute("data-key"))] = {
            "state": node.get_attribute("data-state"),
            "diverged": node.get_attribute("data-diverged") == "true",
            "lines_in": node.get_attribute("data-lines-in"),
            "classes": str(node.get_attribute("class")).split(),
            "text": " ".join(t.text for t in node.find_elements(By.TAG_NAME, "text")),
        }
    return found


def edges(driver: WebDriver) -> list[dict[str, Any]]:
    """Every edge of the picture: its ends, state, sent, rate, buffered, dropped, label."""
    found = []
    for edge in driver.find_elements(By.CSS_SELECTOR, "#picture g.edge"):
        found.append({
            "source": edge.get_attribute("data-source"),
            "target": edge.get_attribute("data-target"),
            "state": edge.get_attribute("data-state"),
            "sent": int(edge.get_attribute("data-sent") or 0),
            "rate": edge.get_attribute("data-rate"),
            "buffered": int(edge.get_attribute("data-buffered") or 0),
            "dropped": int(edge.get_attribute("data-dropped") or 0),
            "classes": str(edge.get_attribute("class")).split(),
            "label": " ".join(t.text for t in edge.find_elements(By.TAG_NAME, "text")),
        })
    return found


def refreshes(driver: WebDriver) -> int:
    return int(driver.find_element(By.TAG_NAME, "body").get_attribute("data-refreshes") or 0)
