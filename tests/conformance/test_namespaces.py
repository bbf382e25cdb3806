"""Conformance: output names in the legacy and non-legacy namespaces, every prefix, globalSuffix,
prefixStats, flush_counts (etsy-semantics.md §4.1).

Each config gets one case with every metric type (tags included, since globalSuffix goes before
the tags); the internal statsd.* names are part of the comparison.
"""

from __future__ import annotations

import pytest

from conformance.harness import Case, ConformanceRunner, case, ids, ordered

pytestmark = pytest.mark.conformance

#: One step of two datagrams, then an idle step.
ALL_TYPES = [
    "{k}.c:3|c\n{k}.c:1|c|@0.5\n{k}.t:10|ms\n{k}.t:20|ms\n{k}.g:7|g\n{k}.s:a|s\n{k}.s:b|s",
    "{k}.tagged:1|c|#env:prod\n{k}.tagged_t:5|ms|#env:prod\n{k}.tagged_g:2|g|#env:prod\n"
    "{k}.tagged_s:x|s|#env:prod\n{k}.gt;dc=eu:1|c\n{k}.bad:x|c",
]

CUSTOM = {"globalPrefix": "gp", "prefixCounter": "pc", "prefixTimer": "pt", "prefixGauge": "pg",
          "prefixSet": "ps", "globalSuffix": "gs"}
EMPTY = {"globalPrefix": "", "prefixCounter": "", "prefixTimer": "", "prefixGauge": "",
         "prefixSet": ""}

CONFIGS = {
    "legacy_default": {},
    "legacy_prefixes_ignored": {"graphite": {"legacyNamespace": True, **CUSTOM},
                                "prefixStats": "sp"},
    "legacy_suffix_only": {"graphite": {"globalSuffix": "sfx"}},
    "legacy_prefix_stats": {"prefixStats": "statsprefix"},
    "legacy_no_counts": {"flush_counts": False},
    "nonlegacy_default": {"graphite": {"legacyNamespace": False}},
    "nonlegacy_custom": {"graphite": {"legacyNamespace": False, **CUSTOM},
                         "prefixStats": "pstats"},
    "nonlegacy_empty_prefixes": {"graphite": {"legacyNamespace": False, **EMPTY}},
    "nonlegacy_empty_global_prefix": {"graphite": {"legacyNamespace": False,
                                                   "globalPrefix": ""}},
    "nonlegacy_suffix_no_counts": {"graphite": {"legacyNamespace": False,
                                                "globalSuffix": "statssuffix"},
                                   "flush_counts": False},
    "legacy_empty_prefix_stats": {"prefixStats": ""},
}

CASES = ordered(
    case(f"ns_{name}", ALL_TYPES, [], config=config,
         about=f"names with config {config or 'defaults'}")
    for name, config in CONFIGS.items()
)


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_matches_etsy(case: Case, conformance_runner: ConformanceRunner) -> None:
    conformance_runner.run(case)
