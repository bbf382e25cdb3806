"""Where things are in this checkout: its root, and the tools ``tools/bootstrap`` installs
under ``.cache/`` (the reference Etsy statsd, carbon-cache).

SHELL (resolves this file's path on disk).
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Installed by ``tools/bootstrap --test``.
CACHE_DIR = REPO_ROOT / ".cache"
