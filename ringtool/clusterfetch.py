"""Reading the cluster: every daemon's ``GET /status`` (and Carbon's own counts), into a
`ringtool.cluster.ClusterReport`.

``report = await collect(proxies=[...], aggregators=[...])`` then ``report_json(report)``
(re-exported here) is what the cluster page serves. For a report over a window, pass an
earlier report's ``sample`` as ``previous``.

Every request is bounded (`common.httpclient`: connecting, each stall, and the whole answer
under ``timeout_seconds``); a daemon that does not answer, answers with an HTTP error or
with something that is not JSON is named in the report as unreachable, never raised.

SHELL (sockets, the clock).
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any, Final

import trio

from common.httpclient import HTTPClientError, open_request

from .cluster import build_report, report_json
from .clustermodel import AGGREGATOR, PROXY, ClusterReport, ClusterSample, StatusAnswer

__all__ = ["DEFAULT_TIMEOUT_SECONDS", "collect", "read_sample", "report_json"]

#: Seconds a daemon has to answer (connect, and the whole answer): a loaded daemon answers
#: /status in milliseconds; one that takes seconds is as good as down for an operator.
DEFAULT_TIMEOUT_SECONDS: Final = 5.0
#: The largest /status document accepted (a proxy with hundreds of aggregators is ~100 KiB).
MAX_STATUS_BYTES: Final = 8 * 1024 * 1024
#: The Graphite target of Carbon's own received-points counters (one series per agent).
CARBON_TARGET: Final = "carbon.agents.*.metricsReceived"


async def fetch_json(url: str, *, timeout_seconds: float) -> tuple[Any, str | None]:
    """``GET url`` as parsed JSON: ``(document, None)``, or ``(None, why not)``."""
    try:
        async with open_request("GET", url, headers=[("accept", "application/json")],
                                connect_timeout=timeout_seconds, read_timeout=timeout_seconds,
                                total_timeout=timeout_seconds) as response:
            body = await response.read(MAX_STATUS_BYTES)
            status = response.status
    except HTTPClientError as exc:
        return None, str(exc)
    if status != 200:
        return None, f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}"
    try:
        return json.loads(body), None
    except ValueError:
        return None, f"not JSON: {body[:100]!r}"
    except RecursionError:  # "[[[[..." nested deeper than the parser's stack
        return None, f"JSON nested too deep: {body[:100]!r}"


def status_url(base: str) -> str:
    """A daemon's ``/status`` URL from its base URL (``http://HOST:PORT``)."""
    return base.rstrip("/") + "/status"


async def _read_all(urls: Sequence[tuple[str, str, int]], timeout_seconds: float
                    ) -> list[StatusAnswer]:
    answers: list[StatusAnswer | None] = [None] * len(urls)

    async def one(slot: int, url: str, tier: str, position: int) -> None:
        document, error = await fetch_json(status_url(url), timeout_seconds=timeout_seconds)
        answers[slot] = StatusAnswer(url=url, tier=tier, position=position,
                                     document=document, error=error)

    async with trio.open_nursery() as nursery:
        for slot, (url, tier, position) in enumerate(urls):
            nursery.start_soon(one, slot, url, tier, position)
    return [a for a in answers if a is not None]


def parse_render_json(document: Any) -> dict[str, int]:
    """A graphite-web ``/render?format=json`` answer as ``{series: sum of its points}``.

    Raises:
        ValueError: for an answer of another shape.
    """
    if not isinstance(document, list):
        raise ValueError("not a list of series")
    out: dict[str, int] = {}
    for series in document:
        if not isinstance(series, Mapping) or not isinstance(series.get("datapoints"), list):
            raise ValueError("a series without datapoints")
        total = 0.0
        for point in series["datapoints"]:
            if isinstance(point, list) and point and isinstance(point[0], int | float):
                total += point[0]
        out[str(series.get("target", "?"))] = int(total)
    return out


async def read_carbon_accepted(base: str, *, since: float, until: float,
                               timeout_seconds: float) -> tuple[dict[str, int] | None,
                                                                str | None]:
    """Carbon's ``metricsReceived`` per agent from ``since`` to ``until``, through the
    graphite-web render API at ``base``."""
    query = urllib.parse.urlencode({"target": CARBON_TARGET, "format": "json",
                                    "from": str(int(since)), "until": str(int(until) + 1)})
    document, error = await fetch_json(f"{base.rstrip('/')}/render?{query}",
                                       timeout_seconds=timeout_seconds)
    if error is not None:
        return None, error
    try:
        return parse_render_json(document), None
    except ValueError as exc:
        return None, f"bad render answer: {exc}"


async def read_sample(*, proxies: Sequence[str] = (), aggregators: Sequence[str] = (),
                      carbon_query: str | None = None,
                      timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
                      carbon_since: float | None = None) -> ClusterSample:
    """Every daemon's /status: the proxies first (all at once), then the aggregators, then
    Carbon's counts since ``carbon_since`` (default: the earliest aggregator's start)."""
    answers = await _read_all([(u, PROXY, i) for i, u in enumerate(proxies)], timeout_seconds)
    answers += await _read_all([(u, AGGREGATOR, i) for i, u in enumerate(aggregators)],
                               timeout_seconds)
    taken_at = time.time()
    accepted = error = None
    if carbon_query:
        if carbon_since is None:
            starts = [a.document.get("started") for a in answers
                      if a.tier == AGGREGATOR and isinstance(a.document, dict)]
            numbers = [s for s in starts if isinstance(s, int | float)]
            carbon_since = min(numbers) if numbers else taken_at - 600
        accepted, error = await read_carbon_accepted(
            carbon_query, since=carbon_since, until=taken_at, timeout_seconds=timeout_seconds)
    return ClusterSample(taken_at=taken_at, answers=tuple(answers), carbon_accepted=accepted,
                         carbon_error=error, carbon_since=carbon_since)


async def collect(*, proxies: Sequence[str] = (), aggregators: Sequence[str] = (),
                  carbon_query: str | None = None,
                  timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
                  previous: ClusterSample | None = None,
                  ring_fingerprint: str | None = None) -> ClusterReport:
    """Read the cluster and build its report (`ringtool.cluster`).

    Args:
        proxies, aggregators: the daemons' base URLs (``http://HOST:PORT``); the aggregators
            in the order of the proxies' ``aggregator`` list.
        carbon_query: a graphite-web base URL to read ``carbon.agents.*.metricsReceived``.
        timeout_seconds: per daemon.
        previous: an earlier report's ``sample``: counters over the window since it.
        ring_fingerprint: the Carbon ring fingerprint the aggregators should have.
    """
    sample = await read_sample(
        proxies=proxies, aggregators=aggregators, carbon_query=carbon_query,
        timeout_seconds=timeout_seconds,
        carbon_since=previous.taken_at if previous is not None else None)
    return build_report(sample, previous=previous, ring_fingerprint=ring_fingerprint)
