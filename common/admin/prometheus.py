"""Readings in the Prometheus text exposition format (GET /metrics), by `prometheus_client`.

Names. A reading ``<role>.<component>[.<instance>].<measure>[.<key>]`` (`common.stats`)
becomes the metric ``tallyd_<role>_<component>_<measure>``, with ``_total`` for a counter
(Prometheus' convention); the instance and the mapping key become labels:

* the instance: ``node`` for a Carbon node, ``forwarder`` for a proxy's forwarder (its
  position), else ``instance``;
* the key: ``reason`` for drop and refusal counts, ``code`` for HTTP answers, ``route`` for
  requests by route, else ``key``.

Levels are gauges. Texts (a state, an address, a fingerprint) are info metrics
(``..._info{value="..."} 1``). Extra labels (``worker``) tell the workers of one
aggregator apart. Characters Prometheus does not allow in a name become ``_``.

Pure: no I/O (prometheus_client only formats here).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from common.stats import COUNTER, LEVEL, Reading

#: What the /metrics answer is (the text format's content type).
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

INSTANCE_LABELS: Final[Mapping[str, str]] = {"carbon": "node", "forwarder": "forwarder"}
KEY_LABELS: Final[Mapping[str, str]] = {"responses": "code", "requests": "route"}

_NOT_NAME: Final = re.compile(r"[^a-zA-Z0-9_]")


def metric_name(reading: Reading) -> str:
    """``tallyd_<role>_<component>_<measure>`` (without ``_total``)."""
    parts = ["tallyd", reading.role, reading.component, reading.measure]
    return _NOT_NAME.sub("_", "_".join(p for p in parts if p))


def key_label(measure: str) -> str:
    if measure in KEY_LABELS:
        return KEY_LABELS[measure]
    if "dropped" in measure or "refused" in measure:
        return "reason"
    return "key"


def reading_labels(reading: Reading) -> dict[str, str]:
    labels: dict[str, str] = {}
    if reading.instance is not None:
        labels[INSTANCE_LABELS.get(reading.component, "instance")] = reading.instance
    if reading.key is not None:
        labels[key_label(reading.measure)] = reading.key
    return labels


class _Families(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self.metrics


def build_families(labelled: Iterable[tuple[Mapping[str, str], Reading]]) -> list[Metric]:
    """One metric family per name; readings without a role (not named by
    `common.stats.read`) are skipped."""
    families: dict[str, Metric] = {}
    for extra, reading in labelled:
        if not reading.role or not reading.measure:
            continue
        name = metric_name(reading)
        labels = {**extra, **reading_labels(reading)}
        if reading.kind in (COUNTER, LEVEL):
            try:
                value = float(reading.value)
            except ValueError:
                continue  # a number that is not one (another worker's garbled answer)
            kind, sample = ("counter", f"{name}_total") if reading.kind == COUNTER \
                else ("gauge", name)
        else:
            kind, sample, value = "info", f"{name}_info", 1.0
            labels["value"] = str(reading.value)
        family = families.get(name)
        if family is None:
            family = families[name] = Metric(name, reading.help or name, kind)
        elif family.type != kind:
            continue  # one name, two kinds: keep the first (never a broken exposition)
        family.add_sample(sample, labels, value)
    return [_even_labels(f) for f in families.values()]


def _even_labels(family: Metric) -> Metric:
    """Every sample of a family with the same label names ('' where one has none)."""
    names = sorted({k for s in family.samples for k in s.labels})
    family.samples = [s._replace(labels={n: s.labels.get(n, "") for n in names})
                      for s in family.samples]
    return family


def format_metrics(labelled: Iterable[tuple[Mapping[str, str], Reading]]) -> bytes:
    """The /metrics body for ``(extra labels, reading)`` pairs."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(build_families(labelled)))
    return generate_latest(registry)


def format_readings(readings: Iterable[Reading]) -> bytes:
    """The /metrics body for one process's readings."""
    return format_metrics(({}, r) for r in readings)
