"""tools/localcarbon.py finds a series where carbon 1.1.10 stores it, tagged series included.

carbon normalises each received name (``TaggedSeries.parse(name).path``) and stores a tagged one
under ``_tagged/`` (``TaggedSeries.encode``). The tool re-implements both in the standard library
(it must run under any python3); this test runs carbon's own code in the carbon venv on the same
names and compares.
"""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

CARBON_SCRIPT = """
import json, os, sys
from carbon.util import TaggedSeries
out = []
for name in json.load(sys.stdin):
    try:
        norm = TaggedSeries.parse(name).path
    except Exception:
        norm = name  # what carbon/cache.py does when the name does not parse
    paths = [TaggedSeries.encode(norm, os.sep, hash_only=True) + ".wsp"]
    if ";" in norm:
        paths.append(TaggedSeries.encode(norm, os.sep, hash_only=False) + ".wsp")
    out.append([norm, paths])
json.dump(out, sys.stdout)
"""

HAND_PICKED = [
    "stats_counts.demo.hits",
    "stats_counts.demo.hits;env=prod",
    "stats_counts.demo.hits;zone=b;env=prod",  # tags are sorted
    "stats.timers.api.lat.upper_90;host=a.b.c",  # dots in a value
    "a;k=v;k=w",  # the last of a repeated tag wins
    "~lead.tilde;x=y",
    "~~",
    "a;flag",  # a bare word (Etsy's DogStatsD tag without ':') does not parse
    "a;=v",
    "a;k=",
    "a;k=~v",
    "a;k!=v",
    "a;k^=v",
    "a;",
    ";k=v",
    'om{env="prod",zone="b"}',
    'om{a="x\\\\"y"}',
    'om{a="1"}{b="2"}',
    '{a="1"}',
    "a;name=other",
    ".leading.dot",
    "",
]


def load_localcarbon() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "localcarbon", REPO_ROOT / "tools" / "localcarbon.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generated_names(count: int) -> list[str]:
    rng = random.Random(20261201)
    alphabet = "ab.~;=!^{}\",\\_-1"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 14)))
            for _ in range(count)]


def test_tagged_paths_match_carbon(carbon_available: Path) -> None:
    localcarbon = load_localcarbon()
    names = HAND_PICKED + generated_names(3000)
    result = subprocess.run(
        [str(carbon_available / "bin" / "python"), "-c", CARBON_SCRIPT],
        input=json.dumps(names), capture_output=True, text=True, check=True, timeout=60,
    )
    expected = json.loads(result.stdout)
    mismatches = [
        (name, norm, paths, localcarbon.normalize_series(name), localcarbon.whisper_relpaths(name))
        for name, (norm, paths) in zip(names, expected, strict=True)
        if localcarbon.normalize_series(name) != norm or localcarbon.whisper_relpaths(name) != paths
    ]
    assert not mismatches, mismatches[:10]
    tagged = sum(";" in norm for norm, _ in expected)
    assert tagged > 100, f"only {tagged} generated names are tagged: the test lost its point"


@pytest.mark.parametrize(("metric", "expected"), [
    ("stats_counts.demo.hits", "stats_counts/demo/hits.wsp"),
    ("stats_counts.demo.hits;env=prod",
     "_tagged/{h0}/{h1}/{h}.wsp"),
])
def test_whisper_relpaths_shape(metric: str, expected: str) -> None:
    import hashlib

    localcarbon = load_localcarbon()
    digest = hashlib.sha256(b"stats_counts.demo.hits;env=prod").hexdigest()
    assert localcarbon.whisper_relpaths(metric)[0] == expected.format(
        h0=digest[:3], h1=digest[3:6], h=digest)


def test_tag_order_does_not_matter() -> None:
    localcarbon = load_localcarbon()
    assert (localcarbon.whisper_relpaths("m;b=2;a=1")
            == localcarbon.whisper_relpaths("m;a=1;b=2"))
