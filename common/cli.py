"""What every tallyd command line shares: reading the config file and ``--version``.

`load_toml` reads a TOML file (the document `common.config.config_from_mapping` then
checks); `add_version_argument` gives a parser ``--version`` from the installed package's
metadata.

SHELL (reads files and package metadata).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import tomllib
from typing import Any, Final

from .errors import ConfigError


def load_toml(path: str) -> dict[str, Any]:
    """Read a TOML file, turning every failure into a `ConfigError` naming the file."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"cannot read config file {path}: not valid TOML: {e}") from e


#: The distribution whose metadata gives ``--version``.
DISTRIBUTION: Final = "tallyd"


def package_version() -> str:
    """The installed tallyd's version, from its package metadata."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def add_version_argument(parser: argparse.ArgumentParser) -> None:
    """``--version``: prints ``PROG VERSION`` and exits 0 (every tallyd command has it)."""
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {package_version()}")
