"""The live cluster page: a static page and the ``/cluster.json`` it draws, over HTTP.

Routes (docs/ui.md):

* ``GET /`` (and ``/ui``): the page, ``ringtool/static/ui.html``;
* ``GET /ui.js``, ``GET /ui.css``: its script and style, from the same folder;
* ``GET /cluster.json``: the cluster report as JSON (``ringtool.cluster.report_json``: every
  daemon's /status read and added up), read again on a request once the last reading is
  `DEFAULT_CACHE_SECONDS` old. Requests that come while a reading is under way wait for it
  and share it, so a page open in many browsers costs the daemons one reading a second;
* ``GET /healthz``: ``ok`` (the page server itself is alive).

The page has no build step and loads nothing from elsewhere: the three files are in the
package (package data), read once when the server starts.

SHELL: `common.httpserver` routes; the reading is a callable (`Collector`) the command line
builds from ``ringtool.clusterfetch.collect``, so tests can feed the page by hand.
"""

from __future__ import annotations

import importlib.resources
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import attrs
import trio

from common.httproutes import (
    HTTPCounters,
    HTTPLimits,
    Response,
    Route,
    json_response,
    route,
)
from common.httpserver import Request, serve_http
from common.logging import log_event

LOGGER = logging.getLogger(__name__)

#: The page server's default address: loopback, like every tallyd admin surface; the port is
#: clear of the daemons' admin ports (8127 aggregator, 8237 + i proxy process i).
DEFAULT_LISTEN: Final = ("127.0.0.1", 8180)
#: How long one reading of the cluster answers ``/cluster.json``: the page asks every 2 s, so
#: one browser gets a fresh reading each time, and many browsers share one.
DEFAULT_CACHE_SECONDS: Final = 1.0
#: The static files, by route, with their content types.
STATIC_FILES: Final = {
    "/ui.js": ("ui.js", "text/javascript; charset=utf-8"),
    "/ui.css": ("ui.css", "text/css; charset=utf-8"),
}
PAGE_FILE: Final = "ui.html"
#: Never cached by a browser: the page and its script change with the installed version.
NO_STORE: Final = ("cache-control", "no-store")

#: Reads the cluster: the report as a JSON object (``report_json``).
Collector = Callable[[], Awaitable[dict[str, Any]]]


def read_static(name: str) -> bytes:
    """The packaged file ``ringtool/static/<name>``.

    Raises:
        FileNotFoundError: when the package was installed without its static files.
    """
    return (importlib.resources.files("ringtool") / "static" / name).read_bytes()


@attrs.frozen
class UIStatistics:
    """The page server's counts."""

    readings: int
    shared: int
    last_reading_seconds: float | None


class ClusterPage:
    """The routes of the page and the cached reading of the cluster.

    Args:
        collect: reads the cluster (`Collector`).
        cache_seconds: how long a reading answers.
        clock: monotonic seconds (tests pass a fake one).
    """

    def __init__(self, collect: Collector, *, cache_seconds: float = DEFAULT_CACHE_SECONDS,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self._collect = collect
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._lock = trio.Lock()
        self._report: dict[str, Any] | None = None
        self._read_at = 0.0
        self._readings = 0
        self._shared = 0
        self._last_duration: float | None = None
        self._page = read_static(PAGE_FILE)
        self._files = {path: (read_static(name), kind)
                       for path, (name, kind) in STATIC_FILES.items()}
        #: The HTTP server's own counts.
        self.http = HTTPCounters()

    def statistics(self) -> UIStatistics:
        return UIStatistics(self._readings, self._shared, self._last_duration)

    def routes(self) -> list[Route]:
        routes = [
            route("GET", "/(?:ui/?)?", self.page),
            route("GET", "/cluster.json", self.cluster),
            route("GET", "/healthz", self.healthz),
        ]
        routes += [route("GET", path.replace(".", r"\."), self.static) for path in self._files]
        return routes

    async def page(self, request: Request) -> Response:
        return Response(200, self._page, (("content-type", "text/html; charset=utf-8"),
                                          NO_STORE))

    async def static(self, request: Request) -> Response:
        body, kind = self._files[request.path]
        return Response(200, body, (("content-type", kind), NO_STORE))

    async def healthz(self, request: Request) -> Response:
        return Response(200, b"ok\n", (("content-type", "text/plain"),))

    async def cluster(self, request: Request) -> Response:
        return json_response(await self.report(), headers=(NO_STORE,))

    async def report(self) -> dict[str, Any]:
        """The last reading if it is fresh enough, else a new one (shared with every
        request that comes while it is read)."""
        asked = self._clock()
        async with self._lock:
            if self._report is not None and (
                    self._read_at >= asked or self._clock() - self._read_at < self._cache_seconds):
                self._shared += 1
                return self._report
            started = self._clock()
            report = await self._collect()
            self._read_at = self._clock()
            self._last_duration = self._read_at - started
            self._report = report
            self._readings += 1
            return report


async def serve_ui(page: ClusterPage, *, host: str = DEFAULT_LISTEN[0],
                   port: int = DEFAULT_LISTEN[1], limits: HTTPLimits | None = None,
                   task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
                   ) -> None:
    """Serve ``page`` on ``host:port`` until cancelled; ``task_status.started`` with the bound
    address (port 0 picks a free one).

    Raises:
        OSError: when the address cannot be bound.
    """
    log_event(LOGGER, "ui_serving", level=logging.DEBUG, host=host, port=port)
    await serve_http(page.routes(), host=host, port=port, limits=limits, counters=page.http,
                     task_status=task_status)
