"""Conformance over several flushes: persistence, idle deletion, gaugesMaxTTL and the delete*
overrides (etsy-semantics.md §2).

Each case sends data, then empty steps (one flush each), then sometimes new data, and compares
every flush.
"""

from __future__ import annotations

import pytest

from conformance.harness import Case, ConformanceRunner, case, ids, ordered

pytestmark = pytest.mark.conformance

ALL_TYPES = "{k}.c:2|c\n{k}.t:5|ms\n{k}.t:7|ms\n{k}.g:9|g\n{k}.s:a|s"
#: Counters whose names contain an internal counter's name are never deleted by deleteCounters.
INTERNAL_LOOKALIKES = ("{k}.my.packets_received:5|c\n{k}.x_metrics_received_y:1|c\n"
                       "{k}.bad_lines_seen_z:1|c\n{k}.packets_receive:1|c")


def idle_case(name: str, config: dict[str, object], about: str) -> Case:
    return case(name, ALL_TYPES, [], [], ["{k}.g:+3|g\n{k}.c:1|c"], [], config=config,
                about=about)


CASES = ordered([
    idle_case("idle_defaults", {},
              "nothing is deleted: counters 0, timers count 0, sets 0, gauges repeat"),
    idle_case("idle_delete_all", {"deleteIdleStats": True},
              "deleteIdleStats deletes idle counters, timers, sets and gauges (TTL 1); a delta "
              "on a deleted gauge starts from 0"),
    case("idle_delete_internal_lookalikes", INTERNAL_LOOKALIKES, [], [],
         config={"deleteIdleStats": True},
         about="a counter whose name contains packets_received, metrics_received or "
               "bad_lines_seen is zeroed, not deleted"),
    idle_case("idle_delete_counters_and_sets", {"deleteCounters": True, "deleteSets": True},
              "only counters and sets are deleted"),
    idle_case("idle_delete_timers_and_gauges", {"deleteTimers": True, "deleteGauges": True},
              "only timers and gauges are deleted"),
    idle_case("idle_delete_all_but_counters_and_gauges",
              {"deleteIdleStats": True, "deleteCounters": False, "deleteGauges": False},
              "explicit delete* settings override deleteIdleStats"),
    idle_case("idle_delete_all_but_timers_and_sets",
              {"deleteIdleStats": True, "deleteTimers": False, "deleteSets": False},
              "explicit delete* settings override deleteIdleStats"),
    case("gauges_max_ttl_3", "{k}.g:1|g", [], [], ["{k}.g:+1|g"], [], [], [], [],
         config={"deleteGauges": True, "gaugesMaxTTL": 3},
         about="a gauge is sent for gaugesMaxTTL flushes after its last update"),
    case("gauges_max_ttl_not_integer", "{k}.g:1|g", [], [],
         config={"deleteGauges": True, "gaugesMaxTTL": 2.5},
         about="a gaugesMaxTTL that is not an integer > 1 means 1"),
    case("gauges_max_ttl_without_delete", "{k}.g:1|g", [], [], [],
         config={"gaugesMaxTTL": 2},
         about="gaugesMaxTTL has no effect unless gauges are deleted"),
])


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_matches_etsy(case: Case, conformance_runner: ConformanceRunner) -> None:
    conformance_runner.run(case)
