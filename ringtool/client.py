"""`AgentClient`: the ring agent's HTTP API (ringtool/agent.py) as async methods.

One connection per request (`common.httpclient`). Metric names are percent-encoded whole into
the path (a ``/`` in a name is sent as ``%2F``, and the agent refuses it). ``timeout`` bounds
connecting and every stall of a read or write, not the whole exchange: a listing of millions
of files streams for as long as it keeps moving.

Every failure is an `AgentError` with a ``reason`` (the agent's own error reason for an HTTP
error answer, such as ``not_found`` or ``unauthorized``; ``connect_failed``, ``timeout``,
``connection_lost``, ``listing_cut``, ``bad_answer`` otherwise) and the HTTP ``status`` when
there was one.

SHELL (sockets).
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any, Final

import attrs

from common.errors import StatsdError
from common.httpclient import HTTPClientError, open_request

#: The largest Whisper file `AgentClient.fetch` accepts (the agent's upload cap is 256 MiB).
MAX_FILE_BYTES: Final = 1024 * 1024 * 1024
#: The largest JSON answer accepted.
MAX_JSON_BYTES: Final = 1024 * 1024
#: The longest line of a listing (a name is at most a few KiB).
MAX_LISTING_LINE_BYTES: Final = 64 * 1024


class AgentError(StatsdError):
    """A request to an agent that failed: ``reason``, and ``status`` for an HTTP answer."""

    def __init__(self, reason: str, detail: str = "", status: int | None = None) -> None:
        head = f"{reason} (HTTP {status})" if status is not None else reason
        super().__init__(f"{head}: {detail}" if detail else head)
        self.reason = reason
        self.detail = detail
        self.status = status


@attrs.frozen
class FileEntry:
    """One series file an agent holds."""

    name: str
    size: int
    mtime: float


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _error_of(status: int, body: bytes) -> AgentError:
    try:
        answer = json.loads(body)
        return AgentError(str(answer["error"]), str(answer.get("detail", "")), status)
    except (ValueError, KeyError, TypeError):
        return AgentError("http_error", body[:200].decode("utf-8", "replace"), status)


def _parse_entry(line: bytes) -> FileEntry | int:
    """One line of a listing: a `FileEntry`, or the count of the end marker."""
    try:
        item = json.loads(line)
        if item.get("end") is True:
            return int(item["files"])
        return FileEntry(str(item["name"]), int(item["size"]), float(item["mtime"]))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise AgentError("bad_answer", f"listing line {line[:200]!r}") from None


async def _entries(body: AsyncGenerator[bytes, None], url: str
                   ) -> AsyncGenerator[FileEntry, None]:
    """The entries of a listing's NDJSON ``body``, checked against its end marker."""
    pending = b""
    seen = 0
    async with aclosing(body) as chunks:
        async for chunk in chunks:
            *lines, pending = (pending + chunk).split(b"\n")
            if len(pending) > MAX_LISTING_LINE_BYTES:
                raise AgentError("bad_answer", "a listing line is too long")
            for line in filter(None, lines):
                entry = _parse_entry(line)
                if isinstance(entry, FileEntry):
                    seen += 1
                    yield entry
                elif entry == seen:
                    return
                else:
                    raise AgentError("listing_cut", f"GET {url}: the end marker says {entry} "
                                     f"files, {seen} came")
    raise AgentError("listing_cut", f"GET {url}: no end marker after {seen} files")


class AgentClient:
    """The agent at ``base_url`` (``http://host:port``), with the cluster ``token``.

    Args:
        base_url: the agent's URL.
        token: sent as ``Authorization: Bearer``; None sends none.
        timeout: seconds to connect, and for any read or write to make progress.
    """

    def __init__(self, base_url: str, *, token: str | None = None,
                 timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"AgentClient({self.base_url!r})"

    def _headers(self, *extra: tuple[str, str]) -> list[tuple[str, str]]:
        auth = [("authorization", f"Bearer {self.token}")] if self.token else []
        return [*auth, *extra]

    async def _call(self, method: str, path: str, *, body: bytes = b"",
                    content_type: str | None = None, max_bytes: int = MAX_JSON_BYTES,
                    allow_404: bool = False) -> tuple[int, bytes]:
        headers = self._headers(*([("content-type", content_type)] if content_type else []))
        try:
            async with open_request(method, self.base_url + path, headers=headers, body=body,
                                    connect_timeout=self.timeout,
                                    read_timeout=self.timeout) as response:
                if response.status >= 400:
                    data = await response.read(MAX_JSON_BYTES)
                    if response.status == 404 and allow_404:
                        return 404, data
                    raise _error_of(response.status, data)
                data = b"" if method == "HEAD" else await response.read(max_bytes)
                return response.status, data
        except HTTPClientError as exc:
            raise AgentError(exc.reason, f"{method} {self.base_url}{path}: {exc.detail}"
                             ) from None

    async def _json(self, method: str, path: str, *, body: bytes = b"",
                    content_type: str | None = None) -> dict[str, Any]:
        _, data = await self._call(method, path, body=body, content_type=content_type)
        try:
            answer = json.loads(data)
        except ValueError:
            raise AgentError("bad_answer", f"not JSON: {data[:200]!r}") from None
        if not isinstance(answer, dict):
            raise AgentError("bad_answer", f"not a JSON object: {data[:200]!r}")
        return answer

    async def version(self) -> dict[str, Any]:
        """``GET /version``: the agent's name, version and data dir."""
        return await self._json("GET", "/version")

    async def iter_files(self) -> AsyncGenerator[FileEntry, None]:
        """``GET /files``: every series file, as the agent walks its data dir.

        An async generator holding a connection: a caller that may stop early closes it
        (``async with contextlib.aclosing(client.iter_files()) as files:``).

        Raises:
            AgentError: ``listing_cut`` when the listing ends without its end marker (or
                with a count that differs from the lines received).
        """
        url = self.base_url + "/files"
        try:
            async with open_request("GET", url, headers=self._headers(),
                                    connect_timeout=self.timeout,
                                    read_timeout=self.timeout) as response:
                if response.status != 200:
                    raise _error_of(response.status, await response.read(MAX_JSON_BYTES))
                async with aclosing(_entries(response.iter_body(), url)) as entries:
                    async for entry in entries:
                        yield entry
        except HTTPClientError as exc:
            raise AgentError("listing_cut" if exc.reason == "connection_lost" else exc.reason,
                             f"GET {url}: {exc.detail}") from None

    async def fetch(self, name: str) -> bytes:
        """``GET /files/<name>``: the file's bytes, read under the agent's flock.

        Raises:
            AgentError: ``not_found`` (status 404) when the agent has no such file.
        """
        _, data = await self._call("GET", f"/files/{_quote(name)}", max_bytes=MAX_FILE_BYTES)
        return data

    async def exists(self, name: str) -> bool:
        """``HEAD /files/<name>``: whether the agent holds the file."""
        status, _ = await self._call("HEAD", f"/files/{_quote(name)}", allow_404=True)
        return status != 404

    async def merge(self, name: str, data: bytes) -> dict[str, Any]:
        """``POST /files/<name>/merge``: merge ``data`` (a .wsp) into the agent's file (created
        if missing); the `MergeResult` JSON plus its ``verification``."""
        return await self._json("POST", f"/files/{_quote(name)}/merge", body=data,
                                content_type="application/octet-stream")

    async def verify(self, name: str, data: bytes) -> dict[str, Any]:
        """``POST /files/<name>/verify``: whether every point of ``data`` is in the file."""
        return await self._json("POST", f"/files/{_quote(name)}/verify", body=data,
                                content_type="application/octet-stream")

    async def pull(self, name: str, source_url: str) -> dict[str, Any]:
        """``POST /files/<name>/pull``: the agent fetches the file from the agent at
        ``source_url`` and merges it; the answer is `merge`'s."""
        body = json.dumps({"source": source_url}).encode()
        return await self._json("POST", f"/files/{_quote(name)}/pull", body=body,
                                content_type="application/json")

    async def delete(self, name: str) -> bool:
        """``DELETE /files/<name>``: True when deleted, False when there was no such file."""
        status, _ = await self._call("DELETE", f"/files/{_quote(name)}", allow_404=True)
        return status != 404
