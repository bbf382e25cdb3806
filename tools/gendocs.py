#!/usr/bin/env python3
"""Regenerates the settings tables in docs/configuration.md from the config declarations.

    .venv/bin/python tools/gendocs.py          # rewrite the file
    .venv/bin/python tools/gendocs.py --check  # exit 1 if it is out of date (the tests do this)
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aggregator.config import AggregatorConfig  # noqa: E402
from common.config import format_reference  # noqa: E402

DOC = ROOT / "docs" / "configuration.md"
TABLES = {"aggregator": AggregatorConfig}
try:
    from proxy.config import ProxyConfig

    TABLES["proxy"] = ProxyConfig
except ImportError:  # the proxy is optional for this tool
    pass


def render(text: str) -> str:
    for role, cls in TABLES.items():
        begin, end = f"<!-- BEGIN {role} settings -->", f"<!-- END {role} settings -->"
        if begin not in text or end not in text:
            continue
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{begin}\n{format_reference(cls)}{end}{tail}"
    return text


def main() -> int:
    current = DOC.read_text()
    wanted = render(current)
    if "--check" in sys.argv:
        if wanted != current:
            print("docs/configuration.md is out of date: run tools/gendocs.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
