"""Build brubeck (github.com/github/brubeck) for bench/scaling.py's ``--brubeck PATH``.

    git clone --recursive https://github.com/github/brubeck SRC   # vendor/ck is a submodule
    .venv/bin/python bench/build_brubeck.py SRC                    # prints SRC/brubeck

Debian packages it needs: gcc, make, libjansson-dev, libssl-dev, libmicrohttpd-dev.
`harness.brubeck.build_brubeck` says what the build changes (one OpenSSL 3 fix).

ENTRY.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.brubeck import build_brubeck
from harness.daemon import DaemonError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="a brubeck checkout with vendor/ck")
    args = parser.parse_args(argv)
    try:
        print(build_brubeck(args.source))
    except DaemonError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
