"""Carbon's own placements, for tallyd's golden-vector tests of common/ring.py.

Runs under the separate carbon venv (``.cache/carbon/bin/python``, carbon==1.1.10), never
under tallyd's: it imports only carbon and the standard library.

Input (stdin, JSON)::

    {"cases": [{"hash_type": "carbon_ch", "replication_factor": 2,
                "destinations": ["10.0.0.1:2003:a", ...], "names": ["a.b.c", ...],
                "walks": 500}, ...]}

Output (stdout, JSON), one entry per case, everything computed by carbon's code:

* ``destinations``: carbon's ``parseDestination`` of each entry, ``[host, port, instance]``;
* ``ring``: the continuum, ``[position, host, instance]`` in ring order;
* ``bumped``: how many points carbon moved up because their position was taken;
* ``replica_keys``: the first three point keys carbon hashed;
* ``placements``: per name, ``ConsistentHashingRouter.getDestinations`` with
  ``DIVERSE_REPLICAS = True``, as ``[host, port, instance]`` lists;
* ``successors``: ``ConsistentHashRing.get_nodes`` as ``[host, instance]`` lists, for the
  first ``walks`` names (default: all; a full walk per name makes the output large).
"""

from __future__ import annotations

import json
import os
import sys
import types
import warnings
from typing import Any


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """Build carbon's router for one layout and place every name of the case."""
    from carbon.routers import ConsistentHashingRouter  # type: ignore[import-not-found]
    from carbon.util import parseDestination  # type: ignore[import-not-found]

    settings = types.SimpleNamespace(
        REPLICATION_FACTOR=case["replication_factor"],
        DIVERSE_REPLICAS=True,
        ROUTER_HASH_TYPE=case["hash_type"],
    )
    router = ConsistentHashingRouter(settings)
    ring = router.ring
    hashed_keys: list[str] = []
    bumped = 0
    original = ring.compute_ring_position

    def recording_position(key: str) -> int:
        # carbon calls this once per point while adding a node, before it looks for a free
        # slot; a position already on the ring at that moment is one carbon will bump.
        nonlocal bumped
        position = int(original(key))
        hashed_keys.append(key)
        bumped += any(entry[0] == position for entry in ring.ring)
        return position

    ring.compute_ring_position = recording_position
    destinations = [parseDestination(text) for text in case["destinations"]]
    for destination in destinations:
        router.addDestination(destination)
    del ring.compute_ring_position  # lookups use carbon's own method again

    return {
        "destinations": [list(destination) for destination in destinations],
        "ring": [[position, host, instance] for position, (host, instance) in ring.ring],
        "bumped": bumped,
        "replica_keys": hashed_keys[:3],
        "placements": [
            [list(destination) for destination in router.getDestinations(name)]
            for name in case["names"]
        ],
        "successors": [
            [list(node) for node in ring.get_nodes(name)]
            for name in case["names"][: case.get("walks")]
        ],
    }


def main() -> int:
    """Read the cases from stdin and write carbon's answers to stdout."""
    # Python puts this script's directory first on sys.path, and tests/support holds
    # tallyd's own helpers (a carbon.py among them) that would shadow the carbon package.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or ".") != here]
    warnings.simplefilter("ignore")  # carbon.routers imports the deprecated `imp` module
    request = json.load(sys.stdin)
    answers = {"cases": [run_case(case) for case in request["cases"]]}
    sys.stdout.write(json.dumps(answers, separators=(",", ":")))  # dumps: the C encoder
    return 0


if __name__ == "__main__":
    sys.exit(main())
