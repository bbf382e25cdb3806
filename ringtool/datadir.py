"""Metric names and their Whisper files under a data dir: ``a.b.c`` <-> ``a/b/c.wsp``.

carbon stores the series ``a.b.c`` in ``DATA_DIR/a/b/c.wsp``: each dot-separated component is
one directory (the last one the file, with ``.wsp``). The agent turns names from the network
into paths, so a name that could reach outside the data dir, or that carbon would never have
written, is refused (`MetricNameError` with a ``reason``):

* ``empty``: an empty name or component (``a..b``, ``.a``, ``a.``; so also ``..`` and ``.``,
  which are only empty components here: a dot separates, it is never inside a component);
* ``absolute``: a name beginning with ``/`` or ``\\``;
* ``bad_character``: NUL, ``/`` or ``\\`` in a component, or a control character;
* ``too_long``: a name over `MAX_NAME_BYTES`, or a component over `MAX_COMPONENT_BYTES` (the
  file system's own limit: a name carbon cannot have stored).

The inverse, `name_for_path`, turns a path found by walking the data dir (relative, with ``/``
separators) back into a name, or None for what is not a series file: not ending in ``.wsp``,
hidden or temporary files (a leading ``.``, as carbon's and our merge's temp files are), or a
path whose components would not make a valid name.

Symlinks are the shell's business (the agent opens with O_NOFOLLOW and checks real paths):
this module only sees strings.

Pure: no I/O.
"""

from __future__ import annotations

from typing import Final

from common.errors import StatsdError

#: The suffix of every Whisper file.
SUFFIX: Final = ".wsp"
#: Linux's NAME_MAX: one path component (the file's ``.wsp`` included) can be no longer.
MAX_COMPONENT_BYTES: Final = 255
#: Linux's PATH_MAX is 4096; a name must leave room for the data dir in front of it.
MAX_NAME_BYTES: Final = 3072


class MetricNameError(StatsdError):
    """A metric name (or path) that cannot be a series file under the data dir."""

    def __init__(self, reason: str, name: str) -> None:
        super().__init__(f"{reason}: {name[:200]!r}")
        self.reason = reason
        self.name = name


def _check_component(component: str, name: str) -> None:
    if not component:
        raise MetricNameError("empty", name)
    if any(c in "/\\\x00" or not c.isprintable() for c in component):
        raise MetricNameError("bad_character", name)
    if len(component.encode("utf-8", "surrogatepass")) > MAX_COMPONENT_BYTES - len(SUFFIX):
        raise MetricNameError("too_long", name)


def check_name(name: str) -> list[str]:
    """The components of a valid metric name.

    Raises:
        MetricNameError: for a name that is refused (module docstring).
    """
    if not name:
        raise MetricNameError("empty", name)
    if name[0] in "/\\":
        raise MetricNameError("absolute", name)
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise MetricNameError("too_long", name)
    components = name.split(".")
    for component in components:
        _check_component(component, name)
    return components


def path_for_name(name: str) -> str:
    """The file of series ``name``, relative to the data dir: ``a.b.c`` -> ``a/b/c.wsp``.

    Raises:
        MetricNameError: for a name that is refused (module docstring).
    """
    return "/".join(check_name(name)) + SUFFIX


def name_for_path(relative: str) -> str | None:
    """The series a walked file holds (``a/b/c.wsp`` -> ``a.b.c``), or None when the file is
    not a series file (not ``.wsp``, hidden or temporary, or not a valid name)."""
    if not relative.endswith(SUFFIX):
        return None
    parts = relative[: -len(SUFFIX)].split("/")
    if any(part.startswith(".") or "." in part for part in parts):
        return None  # hidden/temp files and directories, and names carbon would not write
    name = ".".join(parts)
    try:
        check_name(name)
    except MetricNameError:
        return None
    return name
