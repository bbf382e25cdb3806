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
* ``DELETE /files/<name>``: ``{"deleted": true}``, or 404.

No path leaves the data dir. A name is checked by `ringtool.datadir` (no ``..``, ``.``, empty
components, absolute names, NUL, ``/`` or ``\\``; percent-decoding happens first, so ``%2e%2e``
is ``..``), and then the file system is checked: the real path of the file's directory must be
that directory under the real data dir (no symlinked directory on the way), and the file itself
must be a regular file, never a symlink. The listing walks without following symlinks.

Errors are ``{"error": reason, "detail": ...}`` with 400 (``bad_name``, ``symlink``,
``bad_whisper``, ``bad_request``), 401 (``unauthorized``), 404 (``not_found``), 413
(``too_large``), 502 (``source_failed``: a pull whose source did not answer) or 500.

SHELL: the routes of `common.httpserver`; file work runs in worker threads.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hmac
import json
import logging
import os
import stat
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Final

import attrs
import trio

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
from common.stats import counter

from .client import AgentClient, AgentError
from .datadir import MetricNameError, name_for_path, path_for_name
from .merge import WhisperFormatError
from .mergefile import merge_into, read_locked, verify_file

LOGGER = logging.getLogger(__name__)

#: The agent's default address: loopback, so nothing is exposed until an operator says so.
DEFAULT_LISTEN: Final = ("127.0.0.1", 7070)
#: The largest upload (a .wsp to merge or verify); big retention schemas stay well below it.
DEFAULT_MAX_UPLOAD_BYTES: Final = 256 * 1024 * 1024
#: The largest JSON request body (a pull's source).
MAX_JSON_BODY_BYTES: Final = 64 * 1024
#: Files per batch of the listing: one worker-thread call walks this many.
LISTING_BATCH: Final = 1000
#: Refusals logged per second; the rest are counted (a scan must not flood the log).
REFUSAL_LOGS_PER_SECOND: Final = 5


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


def delete_locked(path: Path) -> bool:
    """Unlink ``path`` holding ``flock(LOCK_EX)`` on it, so that a carbon write or a merge
    under way finishes first; False when it was gone (or replaced while we waited)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        mine, named = os.fstat(fd), os.lstat(path)
        if (mine.st_dev, mine.st_ino) != (named.st_dev, named.st_ino):
            return False
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
    finally:
        os.close(fd)


def walk_batches(root: str, batch: int = LISTING_BATCH) -> Iterator[list[dict[str, Any]]]:
    """The series files under ``root`` as listing entries, ``batch`` at a time, never
    following a symlink (to a file or a directory). One directory is read at a time, lazily,
    so a directory of millions of files costs one batch of memory."""
    out: list[dict[str, Any]] = []
    stack = [""]
    while stack:
        relative = stack.pop()
        try:
            entries = os.scandir(os.path.join(root, relative))
        except OSError:
            continue  # removed meanwhile, or unreadable: not ours to list
        with entries:
            for entry in entries:
                path = f"{relative}/{entry.name}" if relative else entry.name
                item = _entry(entry, path, stack)
                if item is not None:
                    out.append(item)
                if len(out) >= batch:
                    yield out
                    out = []
    if out:
        yield out


def _entry(entry: os.DirEntry[str], path: str, stack: list[str]) -> dict[str, Any] | None:
    """The listing entry of a series file; a directory goes on ``stack`` instead."""
    try:
        if entry.is_dir(follow_symlinks=False):
            stack.append(path)
            return None
        name = name_for_path(path) if entry.is_file(follow_symlinks=False) else None
        if name is None:
            return None
        info = entry.stat(follow_symlinks=False)
    except OSError:
        return None  # gone meanwhile
    return {"name": name, "size": info.st_size, "mtime": info.st_mtime}


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

    def routes(self) -> list[Route]:
        name = r"/files/(?P<name>[^/]+)"
        upload = self.config.max_upload_bytes
        return [
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
        """The checked name and file of the request's ``<name>`` (module docstring)."""
        try:
            name = urllib.parse.unquote(request.params["name"], errors="strict")
            relative = path_for_name(name)
        except UnicodeDecodeError:
            raise HTTPError(400, "bad_name", "the name is not UTF-8") from None
        except MetricNameError as exc:
            raise HTTPError(400, "bad_name", str(exc)) from None
        path = os.path.join(self.root, relative)
        parent = os.path.dirname(path)
        if os.path.realpath(parent) != parent:
            raise HTTPError(400, "symlink", f"{name}: a directory on its path is a symlink")
        return name, Path(path)

    def _existing(self, path: Path, name: str) -> os.stat_result:
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            raise HTTPError(404, "not_found", name) from None
        except NotADirectoryError:
            raise HTTPError(404, "not_found", name) from None
        if stat.S_ISLNK(info.st_mode):
            raise HTTPError(400, "symlink", f"{name}: the file is a symlink")
        if not stat.S_ISREG(info.st_mode):
            raise HTTPError(404, "not_found", f"{name}: not a regular file")
        return info

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
        await trio.to_thread.run_sync(self._prepare, path, name)
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

    def _prepare(self, path: Path, name: str) -> None:
        """Create the file's missing directories one at a time, each checked to be a real
        directory (never through a symlink), and refuse a file that is not a regular one."""
        current = self.root
        for part in path.relative_to(self.root).parts[:-1]:
            current = os.path.join(current, part)
            with contextlib.suppress(FileExistsError):
                os.mkdir(current)
            info = os.lstat(current)
            if stat.S_ISLNK(info.st_mode):
                raise HTTPError(400, "symlink", f"{name}: a directory on its path is a symlink")
            if not stat.S_ISDIR(info.st_mode):
                raise HTTPError(409, "conflict", f"{name}: a file is in the way")
        if os.path.lexists(path):
            self._existing(path, name)


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
