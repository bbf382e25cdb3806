"""common.httproutes: route matching, answers, and the server's statistics snapshot."""

from __future__ import annotations

import json

from common import stats
from common.httproutes import (
    HTTPCounters,
    HTTPStatistics,
    Response,
    error_response,
    find_route,
    json_response,
    route,
)


async def nothing(request: object) -> Response:
    return Response()


ROUTES = [
    route("GET", "/files", nothing),
    route(["get", "DELETE"], r"/files/(?P<name>[^/]+)", nothing, max_body_bytes=10),
    route("POST", r"/files/(?P<name>[^/]+)/merge", nothing, max_body_bytes=100),
]


def test_route_matches_the_whole_raw_path_and_names_its_params() -> None:
    found, params, _ = find_route(ROUTES, "POST", "/files/a.b%2Fc/merge")
    assert found is ROUTES[2] and params == {"name": "a.b%2Fc"}
    assert find_route(ROUTES, "GET", "/files/x/merge/more")[0] is None
    assert find_route(ROUTES, "GET", "/files/")[0] is None
    assert find_route(ROUTES, "GET", "/filesx")[0] is None


def test_get_routes_answer_head_and_methods_are_upper_case() -> None:
    assert find_route(ROUTES, "HEAD", "/files/a")[0] is ROUTES[1]
    assert find_route(ROUTES, "DELETE", "/files/a")[0] is ROUTES[1]


def test_no_route_says_which_methods_the_path_allows() -> None:
    assert find_route(ROUTES, "PUT", "/files/a") == (None, {}, {"DELETE", "GET", "HEAD"})
    assert find_route(ROUTES, "GET", "/nowhere") == (None, {}, set())


def test_answers_are_json_with_their_headers() -> None:
    answer = error_response(405, "method_not_allowed", "PUT", (("allow", "GET"),))
    assert answer.status == 405
    assert json.loads(answer.body) == {"error": "method_not_allowed", "detail": "PUT"}
    assert answer.headers == (("content-type", "application/json"), ("allow", "GET"))
    assert json.loads(json_response([1, 2]).body) == [1, 2]


def test_counters_give_a_snapshot_named_like_every_statistic() -> None:
    counters = HTTPCounters()
    counters.requests += 2
    counters.answered(200)
    counters.answered(200)
    snapshot = counters.statistics()
    counters.answered(404)
    assert snapshot == HTTPStatistics(0, 0, 2, 0, 0, {"200": 2})
    names = {r.name: r.value for r in stats.read("ring", "agent", snapshot, instance="http")}
    assert names["ring.agent.http.requests"] == 2
    assert names["ring.agent.http.responses.200"] == 2
