"""The ring agent: the HTTP API a Carbon host's Whisper files are listed, read and merged by.

Routes (docs/operations.md, "The ring agent"); names are dotted and percent-encoded whole:

* ``GET /version``: ``{"agent", "version", "data_dir"}``, the one route that needs no token;
* ``GET /files``: NDJSON, one ``{"name", "size", "mtime"}`` per series file, then
  ``{"end": true, "files": N}``: a listing without its end line was cut;
* ``HEAD``/``GET /files/<name>``: the file, read under carbon's flock;
* ``POST /files/<name>/merge``: the body (a .wsp) merged into the file, created if missing;
  the `MergeResult` and, read back right after, the `Verification`;
* ``POST /files/<name>/verify``: the `Verification` of the body against the file;
* ``POST /files/<name>/pull``: ``{"source": URL}``; the file fetched from that agent (with this
  agent's token: one per cluster) and merged here; answered as a merge;
* ``DELETE /files/<name>``: ``{"deleted": true}``, or 404;
* ``GET /healthz``, ``/readyz``, ``/status``, ``/metrics``: the admin every tallyd daemon
  serves (`common.admin`, docs/admin.md; role ``ring-agent``), without a token like
  ``/version`` (figures only, no file data).

No path leaves the data dir (`ringtool.agentfiles`: names, symlinks, the walk). Errors are
``{"error": reason, "detail": ...}`` with 400 (``bad_name``, ``symlink``, ``bad_whisper``,
``bad_request``), 401 (``unauthorized``), 404 (``not_found``), 409 (``conflict``), 413
(``too_large``), 502 (``source_failed``: a pull whose source did not answer) or 500.

SHELL: the routes of `common.httpserver`; file work runs in worker threads.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Final

import attrs
import trio

from common.admin.routes import admin_routes
from common.cli import package_version
from common.httpclient import HTTPClientError, split_url
from common.httproutes import (
    Handler,
    HTTPCounters,
    HTTPError,
    HTTPLimits,
    Response,
    Route,
    json_response,
    route,
)
from common.httpserver import Request, serve_http
from common.logging import RateLimiter, log_event
from common.stats import Reading, counter, read

from .agentadmin import AgentAdmin
from .agentfiles import (
    PathRefused,
    delete_locked,
    make_parents,
    regular_file,
    resolve_name,
    walk_batches,
)
from .client import AgentClient, AgentError
from .merge import WhisperFormatError
from .mergefile import merge_into, read_locked, verify_file

LOGGER = logging.getLogger(__name__)

#: The agent's default address: loopback, so nothing is exposed until an operator says so.
DEFAULT_LISTEN: Final = ("127.0.0.1", 7070)
#: The largest upload (a .wsp to merge or verify); big retention schemas stay well below it.
DEFAULT_MAX_UPLOAD_BYTES: Final = 256 * 1024 * 1024
#: The largest JSON request body (a pull's source).
MAX_JSON_BODY_BYTES: Final = 64 * 1024
#: Refusals logged per second; the rest are counted (a scan must not flood the log).
REFUSAL_LOGS_PER_SECOND: Final = 5
#: The answer to each `PathRefused` reason.
REFUSAL_STATUS: Final = {"bad_name": 400, "symlink": 400, "not_found": 404, "conflict": 409}


@attrs.frozen
class AgentConfig:
    """What one agent serves and how."""

    data_dir: Path
    host: str = DEFAULT_LISTEN[0]
    port: int = DEFAULT_LISTEN[1]
    token: str | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    limits: HTTPLimits = attrs.field(factory=HTTPLimits)


@attrs.frozen
class AgentStatistics:
    """The agent's totals since it started."""

    requests: dict[str, int] = counter(help="requests, by route")
    refused: dict[str, int] = counter(help="requests refused, by reason")
    merges: int = counter(help="merges done (pulls included)")
    created: int = counter(help="files created by a merge")
    filled: int = counter(help="slots filled by merges")
    conflicts: int = counter(help="slots where a merge kept the local value over another")
    deleted: int = counter(help="files deleted")


class Agent:
    """The routes of one agent and its counts."""

    def __init__(self, config: AgentConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.root = os.path.realpath(config.data_dir)
        self._clock = clock
        self._token = config.token.encode() if config.token else None
        self._requests: dict[str, int] = {}
        self._refused: dict[str, int] = {}
        self._merge_totals = dict.fromkeys(("merges", "created", "filled", "conflicts",
                                            "deleted"), 0)
        self._refusal_log = RateLimiter(REFUSAL_LOGS_PER_SECOND)
        #: The HTTP server's own counts (connections, timeouts, answers by status).
        self.http = HTTPCounters()

    def statistics(self) -> AgentStatistics:
        return AgentStatistics(dict(self._requests), dict(self._refused), **self._merge_totals)

    def readings(self) -> list[Reading]:
        """The agent's figures and its HTTP server's, named (``ring.agent.*``, ``ring.http.*``)."""
        return [*read("ring", "agent", self.statistics()),
                *read("ring", "http", self.http.statistics())]

    def routes(self) -> list[Route]:
        name = r"/files/(?P<name>[^/]+)"
        upload = self.config.max_upload_bytes
        return [
            *admin_routes(AgentAdmin(
                readings=self.readings, data_dir=self.root, version=package_version(),
                settings=f"data_dir = {self.root!r}\nmax_upload_bytes = "
                         f"{self.config.max_upload_bytes}\ntoken = {self._token is not None}\n")),
            route("GET", "/version", self._wrap("version", self.version, public=True)),
            route("GET", "/files", self._wrap("list", self.list_files)),
            route(["GET", "HEAD"], name, self._wrap("fetch", self.fetch)),
            route("DELETE", name, self._wrap("delete", self.delete)),
            route("POST", name + "/merge", self._wrap("merge", self.merge),
                  max_body_bytes=upload),
            route("POST", name + "/verify", self._wrap("verify", self.verify),
                  max_body_bytes=upload),
            route("POST", name + "/pull", self._wrap("pull", self.pull),
                  max_body_bytes=MAX_JSON_BODY_BYTES),
        ]

    def _wrap(self, label: str, handler: Handler, *, public: bool = False) -> Handler:
        async def guarded(request: Request) -> Response:
            self._requests[label] = self._requests.get(label, 0) + 1
            try:
                if not public:
                    self._authorize(request)
                return await handler(request)
            except HTTPError as exc:
                if exc.status in (400, 401, 413):
                    self._refuse(request, exc)
                raise
        return guarded

    def _refuse(self, request: Request, exc: HTTPError) -> None:
        self._refused[exc.reason] = self._refused.get(exc.reason, 0) + 1
        if self._refusal_log.allow():
            log_event(LOGGER, "request_refused", level=logging.WARNING, method=request.method,
                      path=request.path[:200], status=exc.status, reason=exc.reason,
                      detail=exc.detail[:200], suppressed=self._refusal_log.take_suppressed())

    def _authorize(self, request: Request) -> None:
        if self._token is None:
            return
        scheme, _, given = (request.header("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 self._token):
            raise HTTPError(401, "unauthorized", "a valid Authorization: Bearer token is needed")

    def _path_of(self, request: Request) -> tuple[str, Path]:
        """The checked name and file of the request's ``<name>``."""
        with _refusals():
            return resolve_name(self.root, request.params["name"])

    def _existing(self, path: Path, name: str) -> os.stat_result:
        with _refusals():
            return regular_file(path, name)

    async def version(self, request: Request) -> Response:
        return json_response({"agent": "tallyd-ring", "version": package_version(),
                              "data_dir": self.root})

    async def list_files(self, request: Request) -> Response:
        return Response(200, self._listing(), (("content-type", "application/x-ndjson"),))

    async def _listing(self) -> AsyncIterator[bytes]:
        batches = walk_batches(self.root)
        done = object()
        count = 0
        while True:
            batch = await trio.to_thread.run_sync(next, batches, done)
            if batch is done:
                break
            assert isinstance(batch, list)
            count += len(batch)
            yield b"".join(json.dumps(item, separators=(",", ":")).encode() + b"\n"
                           for item in batch)
        yield json.dumps({"end": True, "files": count}, separators=(",", ":")).encode() + b"\n"

    async def fetch(self, request: Request) -> Response:
        name, path = self._path_of(request)
        info = self._existing(path, name)
        headers = (("content-type", "application/octet-stream"),)
        if request.method == "HEAD":
            return Response(200, b"", (*headers, ("content-length", str(info.st_size))))
        try:
            data = await trio.to_thread.run_sync(read_locked, path)
        except FileNotFoundError:
            raise HTTPError(404, "not_found", name) from None
        return Response(200, data, headers)

    async def delete(self, request: Request) -> Response:
        name, path = self._path_of(request)
        self._existing(path, name)
        if not await trio.to_thread.run_sync(delete_locked, path):
            raise HTTPError(404, "not_found", name)
        self._merge_totals["deleted"] += 1
        log_event(LOGGER, "file_deleted", name=name)
        return json_response({"deleted": True})

    async def merge(self, request: Request) -> Response:
        name, path = self._path_of(request)
        return await self._merge(name, path, await request.read_body(), source="upload")

    async def pull(self, request: Request) -> Response:
        name, path = self._path_of(request)
        try:
            source = json.loads(await request.read_body())["source"]
            split_url(source)
        except (ValueError, KeyError, TypeError, HTTPClientError) as exc:
            raise HTTPError(400, "bad_request", f'body must be {{"source": URL}}: {exc}'
                            ) from None
        client = AgentClient(source, token=self.config.token,
                             timeout=self.config.limits.request_timeout_seconds)
        try:
            data = await client.fetch(name)
        except AgentError as exc:
            if exc.status == 404:
                raise HTTPError(404, "not_found", f"{name} at {source}") from None
            raise HTTPError(502, "source_failed", f"{source}: {exc}") from None
        return await self._merge(name, path, data, source=source)

    async def _merge(self, name: str, path: Path, data: bytes, *, source: str) -> Response:
        now = int(self._clock())
        with _refusals():
            await trio.to_thread.run_sync(make_parents, self.root, path, name)
        try:
            result = await trio.to_thread.run_sync(functools.partial(merge_into, path, data,
                                                                     now=now))
            check = await trio.to_thread.run_sync(functools.partial(verify_file, path, data,
                                                                    now=now))
        except WhisperFormatError as exc:
            raise HTTPError(400, "bad_whisper", f"{name}: {exc}") from None
        totals = self._merge_totals
        totals["merges"] += 1
        totals["created"] += int(result.created)
        totals["filled"] += result.filled
        totals["conflicts"] += result.conflicts
        log_event(LOGGER, "merge_done", name=name, source=source, created=result.created,
                  filled=result.filled, conflicts=result.conflicts, same=result.same,
                  skipped_coarse=result.skipped_coarse, missing=check.missing)
        return json_response({**result.to_json(), "verification": check.to_json()})

    async def verify(self, request: Request) -> Response:
        name, path = self._path_of(request)
        data = await request.read_body()
        self._existing(path, name)
        now = int(self._clock())
        try:
            check = await trio.to_thread.run_sync(functools.partial(verify_file, path, data,
                                                                    now=now))
        except WhisperFormatError as exc:
            raise HTTPError(400, "bad_whisper", f"{name}: {exc}") from None
        except FileNotFoundError:
            raise HTTPError(404, "not_found", name) from None
        return json_response(check.to_json())


@contextlib.contextmanager
def _refusals() -> Iterator[None]:
    """`PathRefused` as its HTTP answer."""
    try:
        yield
    except PathRefused as exc:
        raise HTTPError(REFUSAL_STATUS[exc.reason], exc.reason, exc.detail) from None


async def serve_agent(agent: Agent, *,
                      task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
                      ) -> None:
    """Serve ``agent`` until cancelled; ``task_status.started`` with the bound address.

    Raises:
        OSError: when the address cannot be bound.
    """
    config = agent.config
    await serve_http(agent.routes(), host=config.host, port=config.port, limits=config.limits,
                     counters=agent.http, task_status=task_status)

