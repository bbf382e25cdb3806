"""What of a tagged path (``name;tag=value;...``) the Carbon ring hashes: ``ring_tag_key``.

* ``as_received``: the whole path, as it arrived. carbon-relay 1.1.10 does this by default
  (``TAG_RELAY_NORMALIZED = False``), and so do tallyd's carbon modes and ``ketama``.
* ``name_only``: the bytes before the first ``;``. A live carbon-c-relay does this (its
  dispatcher ends the hashed name at the first ``;`` when tags are on, its default), so it
  is the default of the ``crelay_*`` and ``jump_fnv1a_ch`` modes. c-relay's test mode
  (``-t``) hashes the whole path instead, so it disagrees with the running relay here.
* ``normalized``: carbon's ``TaggedSeries.parse(path).path``, which carbon-relay hashes with
  ``TAG_RELAY_NORMALIZED = True`` and which carbon-cache and graphite-web always use: the
  name (leading ``~`` stripped) and the tags sorted as ``;tag=value`` strings, later
  repeats of a tag winning; OpenMetrics ``name{tag="value",...}`` is read too. A path that
  carbon cannot parse is hashed as received, as carbon then relays it unchanged.

Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

RING_TAG_KEYS: Final = ("as_received", "name_only", "normalized")

_OPENMETRICS_TAG: Final = re.compile(r'([^=]+)="((?:[\\]["\\]|[^"\\])+)"(:?,|$)')
_PROHIBITED_IN_TAG: Final = ";!^="


class _Unparsable(Exception):
    """carbon's TaggedSeries.parse would raise: carbon keeps the path as received."""


def _check_tag(tag: str, value: str) -> None:
    if not tag or not value or any(char in tag for char in _PROHIBITED_IN_TAG):
        raise _Unparsable
    if ";" in value or value[0] == "~":
        raise _Unparsable


def _openmetrics_tags(path: str) -> tuple[str, dict[str, str]]:
    parts = path[:-1].split("{", 2)
    if len(parts) != 2 or not parts[0]:
        raise _Unparsable
    metric, raw = parts
    tags: dict[str, str] = {}
    while raw:
        match = _OPENMETRICS_TAG.match(raw)
        if match is None:
            raise _Unparsable
        value = match[2].replace('\\"', '"').replace("\\\\", "\\")
        _check_tag(match[1], value)
        tags[match[1]] = value
        raw = raw[len(match[0]):]
    return metric, tags


def _carbon_tags(path: str) -> tuple[str, dict[str, str]]:
    metric, *segments = path.split(";")
    if not metric:
        raise _Unparsable
    tags: dict[str, str] = {}
    for segment in segments:
        tag = segment.split("=", 1)
        if len(tag) != 2 or not tag[0]:
            raise _Unparsable
        _check_tag(tag[0], tag[1])
        tags[tag[0]] = tag[1]
    return metric, tags


def normalize_tagged(path: str) -> str | None:
    """carbon 1.1.10's ``TaggedSeries.parse(path).path``, or None where carbon raises."""
    try:
        is_openmetrics = path[-2:] == '"}' and "{" in path
        metric, tags = (_openmetrics_tags if is_openmetrics else _carbon_tags)(path)
    except _Unparsable:
        return None
    name = metric.lstrip("~")
    if not name:
        return None
    return name + "".join(sorted(f";{tag}={value}" for tag, value in tags.items()
                                 if tag != "name"))


def _normalized(data: bytes) -> bytes:
    if b";" not in data and not data.startswith(b"~") and not data.endswith(b'"}'):
        return data  # untagged and nothing to strip: carbon's path is the same
    try:
        normal = normalize_tagged(data.decode())
    except UnicodeDecodeError:
        return data
    return data if normal is None else normal.encode()


def _name_only(data: bytes) -> bytes:
    return data.split(b";", 1)[0] if b";" in data else data


def tag_key_function(tag_key: str) -> Callable[[bytes], bytes] | None:
    """The bytes a ring hashes for a path's bytes under ``tag_key``; None for
    ``as_received`` (the path itself: no call on the lookup path)."""
    return {"as_received": None, "name_only": _name_only, "normalized": _normalized}[tag_key]
