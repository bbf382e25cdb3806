"""The admin paths and their answers, for any role that implements `AdminSource`.

* ``GET /healthz``: 200 ``ok`` while the process runs (liveness);
* ``GET /readyz``: 200 when `AdminSource.not_ready` is empty, else 503 with the reasons
  (JSON ``{"ready": false, "not_ready": [...]}``);
* ``GET /status``: the document of `common.admin.status`;
* ``GET /metrics``: the Prometheus text format (`common.admin.prometheus`);
* ``GET /route/<name>``: where a metric name goes (the role decides what it knows; 404
  on a role that routes nothing).

Pure: the handlers only call the source (no I/O of their own).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, Protocol

from common.httproutes import HTTPError, Response, Route, json_response, route

from .prometheus import CONTENT_TYPE

#: The longest metric name /route/<name> takes (a line is at most a datagram).
MAX_ROUTE_NAME_BYTES: Final = 8192


class AdminSource(Protocol):
    """What a role hands its admin server."""

    def not_ready(self) -> list[str]:
        """Why the daemon is not ready (empty: ready)."""

    async def status(self) -> dict[str, Any]:
        """The /status document."""

    async def metrics(self) -> bytes:
        """The /metrics body."""

    async def route(self, name: str) -> dict[str, Any] | None:
        """Where ``name`` goes, or None when this role routes nothing."""


def admin_routes(source: AdminSource) -> Sequence[Route]:
    """The routes of the admin server, bound to ``source``."""

    async def healthz(request: Any) -> Response:
        return Response(200, b"ok\n", (("content-type", "text/plain; charset=utf-8"),))

    async def readyz(request: Any) -> Response:
        reasons = source.not_ready()
        if reasons:
            return json_response({"ready": False, "not_ready": reasons}, 503)
        return json_response({"ready": True, "not_ready": []})

    async def status(request: Any) -> Response:
        return json_response(await source.status())

    async def metrics(request: Any) -> Response:
        return Response(200, await source.metrics(), (("content-type", CONTENT_TYPE),))

    async def where(request: Any) -> Response:
        name = parse_route_name(request.params["name"])
        found = await source.route(name)
        if found is None:
            raise HTTPError(404, "not_found", "this daemon routes no metric names")
        return json_response(found)

    return [
        route("GET", r"/healthz", healthz),
        route("GET", r"/readyz", readyz),
        route("GET", r"/status", status),
        route("GET", r"/metrics", metrics),
        route("GET", r"/route/(?P<name>.+)", where),
    ]


def parse_route_name(raw: str) -> str:
    """The metric name of ``/route/<name>`` (percent-decoded).

    Raises:
        HTTPError: 400 for an empty or too long name, or one with a newline.
    """
    try:
        name = percent_decode(raw)
    except ValueError:
        raise HTTPError(400, "bad_name", "not percent-encoded UTF-8") from None
    if not name or len(name.encode()) > MAX_ROUTE_NAME_BYTES:
        raise HTTPError(400, "bad_name", "a metric name, percent-encoded, at most "
                                         f"{MAX_ROUTE_NAME_BYTES} bytes")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name) or len(name.splitlines()) != 1:
        raise HTTPError(400, "bad_name", "a metric name holds no control characters or "
                                         "line separators")
    return name


def percent_decode(text: str) -> str:
    """``%XX`` escapes of ``text`` decoded as UTF-8 (RFC 3986).

    Raises:
        ValueError: a broken escape, or bytes that are not UTF-8.
    """
    out = bytearray()
    i = 0
    while i < len(text):
        char = text[i]
        if char == "%":
            pair = text[i + 1:i + 3]
            if len(pair) != 2 or not all(c in "0123456789abcdefABCDEF" for c in pair):
                raise ValueError(f"bad escape at {i}")
            out.append(int(pair, 16))
            i += 3
        else:
            out += char.encode()
            i += 1
    return out.decode("utf-8")
