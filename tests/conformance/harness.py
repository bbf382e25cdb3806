"""Differential conformance harness: tallyd-aggregator against the real Etsy statsd.

A *case* is a list of *steps*; a step is a list of UDP datagrams. The harness runs a *pair* of
daemons (Etsy statsd 0.9.0 as the reference, ``python -m aggregator`` as the candidate) with the
same Etsy config, each flushing to its own Graphite sink, and for every step:

1. waits until each daemon has just started a flush (the "send window": its latest flush began
   less than ``interval - guard`` ago, so the next one is still well ahead);
2. sends the step's datagrams, byte for byte and in the same order, to both (127.0.0.1 only);
3. takes each daemon's NEXT flush as the step's result.

The steps of a case map to consecutive flushes of each daemon: no idle flush may slip in between
(gauge TTLs and idle deletion count flushes). If the window was missed, or the daemon's own
``packets_received`` says the datagrams landed in another flush, that is a harness timing error:
the pair is restarted and the case retried once.

Etsy opens one TCP connection per flush, so its flushes are grouped by connection. tallyd keeps one
connection and stamps every line of a flush with the same timestamp, so its flushes are grouped
by timestamp; as timestamps are whole seconds and the interval here is shorter, its lines are
also grouped by the wall-clock slot they arrive in (tallyd flushes at wall-clock multiples of the
interval). The first flush of a fresh pair is never a result (Etsy sends
``statsd.timestamp_lag`` from its second flush on; tallyd does the same).

Comparison: timestamps are dropped, the VALUES of timing-dependent internal metrics are masked
(processing_time, graphiteStats.*, timestamp_lag), and the remaining ``name value`` lines are
compared as multisets. Every line is compared, internal ``statsd.*`` metrics included, except
lines that belong to OTHER cases run earlier on the same pair: each case writes its metric names
with the placeholder ``{k}``, replaced by the case's token ``Q<case name>Q``.

A *divergent* case covers inputs where tallyd deliberately differs from Etsy (the numbered list
in docs / the brief). It states the expected lines for tallyd (and, where the input is safe for
Etsy, for Etsy too, documenting the difference). Only the lines carrying the case's token and
the lines whose names the expectations mention are checked.

tallyd runs with the Etsy config file plus flags for its addresses and ``TALLYD_COMPAT_FLAGS``
(tallyd-only additions to the output switched off); cases made with ``tallyd_defaults=True`` run
it without those flags.

Pairs are cached by config (at most ``MAX_PAIRS`` alive) and reused by later cases with the
same config; a failing case discards its pair, so one bug does not cascade into later cases.
The order of the collected cases is known (tests/conftest.py records it), so the pair for the
next config is started in the background while the current one works.

Environment:
    TALLYD_CONFORMANCE_INTERVAL_MS   flush interval of both daemons (default 500)
    TALLYD_CONFORMANCE_CANDIDATE     "tallyd" (default) or "etsy": a harness self-test that runs
                                     a second Etsy as the candidate; every differential case must
                                     then pass, and divergent cases check Etsy's side only.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness.daemon import DaemonError, DaemonProcess
from harness.etsy import start_etsy
from harness.sink import Flush, GraphiteSink, Grouping
from harness.tallyd import start_aggregator

INTERVAL_MS = int(os.environ.get("TALLYD_CONFORMANCE_INTERVAL_MS", "500"))
INTERVAL = INTERVAL_MS / 1000
CANDIDATE: Literal["tallyd", "etsy"] = (
    "etsy" if os.environ.get("TALLYD_CONFORMANCE_CANDIDATE", "tallyd") == "etsy" else "tallyd"
)
#: Send only if the next flush of every daemon is at least this far away.
GUARD = max(0.12, 0.3 * INTERVAL)
#: A group of timestamped lines is complete after this much quiet (tallyd's view).
SETTLE = min(0.15, 0.3 * INTERVAL)
#: Timestamps are whole seconds, so sub-second flushes can share one. tallyd flushes at
#: wall-clock multiples of the interval, so its lines are also grouped by the wall-clock slot they
#: arrive in, with the slot edge this far after the flush instant (a flush written in parts, by
#: several workers, stays together unless they are further apart than this).
SLOT_OFFSET = 0.7 * INTERVAL
#: When a case cannot follow the previous one flush-to-flush, wait until this many flushes have
#: passed on each daemon, so leftovers of earlier cases (TTL gauges, idle deletions) have settled
#: the same way on both.
SETTLE_FLUSHES = 4
MAX_PAIRS = 2
#: How many upcoming configs get their pair started in the background.
PREFETCH = 1
BASE_CONFIG: dict[str, Any] = {"flushInterval": INTERVAL_MS}
#: Flags that switch off tallyd-only additions to the output, so that what is compared is the
#: Etsy-compatible part. Cases built with ``tallyd_defaults=True`` run without them.
TALLYD_COMPAT_FLAGS = ("--no-self-metrics",)

_TOKEN = re.compile(r"Q[a-z0-9_]+Q")
#: Internal metrics whose values depend on timing; their names are still compared.
_TIMING_DEPENDENT = re.compile(
    r"(?:^|\.)(?:processing_time|timestamp_lag|graphiteStats\.(?:calculationtime|last_exception"
    r"|last_flush|flush_time|flush_length))(?:$|[.;])"
)
MASK = "<masked>"
#: tallyd's own metrics, on by default:
#: <prefix_stats>.tallyd.aggregator.<identity>.<component>..., every figure of `common.stats`.
_SELF_METRICS = re.compile(r"(^|\.)tallyd\.aggregator\.[^.;]+\.")


class HarnessTimingError(Exception):
    """The datagrams of a step could not be tied to one flush of each daemon."""


# -- cases -----------------------------------------------------------------------------------

Datagram = str | bytes
Step = Datagram | Sequence[Datagram]


def _as_step(step: Step) -> tuple[bytes, ...]:
    if isinstance(step, (str, bytes)):
        step = [step]
    return tuple(d.encode() if isinstance(d, str) else bytes(d) for d in step)


def _config_key(config: Mapping[str, Any] | None) -> str:
    merged = {**BASE_CONFIG, **(config or {})}
    return json.dumps(merged, sort_keys=True)


@dataclass(frozen=True)
class Case:
    """One conformance case; build it with :func:`case` or :func:`divergent`."""

    name: str
    steps: tuple[tuple[bytes, ...], ...]
    config_key: str
    about: str = ""
    #: Divergent cases: expected "name value" lines per step (with {k}), per daemon.
    tallyd: tuple[tuple[str, ...], ...] | None = None
    etsy: tuple[tuple[str, ...], ...] | None = None
    difference: str = ""
    send_to_etsy: bool = True
    #: Run tallyd with its default flags instead of TALLYD_COMPAT_FLAGS.
    tallyd_defaults: bool = False

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9_]+", self.name):
            raise ValueError(f"case names are [a-z0-9_]+: {self.name!r}")
        for label, expect in (("tallyd", self.tallyd), ("etsy", self.etsy)):
            if expect is not None and len(expect) != len(self.steps):
                raise ValueError(f"{self.name}: {label} expects {len(expect)} steps, "
                                 f"the case has {len(self.steps)}")

    @property
    def token(self) -> str:
        return f"Q{self.name}Q"

    @property
    def config(self) -> dict[str, Any]:
        return json.loads(self.config_key)

    @property
    def divergent(self) -> bool:
        return self.tallyd is not None

    @property
    def pair_key(self) -> str:
        """Divergent cases get their own pairs: Etsy keeps what they create (``stats.``...)."""
        pools = ("#divergent" if self.divergent else "") + ("#defaults" if self.tallyd_defaults
                                                            else "")
        return self.config_key + pools

    def datagrams(self, index: int) -> list[bytes]:
        return [d.replace(b"{k}", self.token.encode()) for d in self.steps[index]]

    def expected(self, who: Literal["tallyd", "etsy"], index: int) -> list[str] | None:
        expect = self.tallyd if who == "tallyd" else self.etsy
        if expect is None:
            return None
        return [line.replace("{k}", self.token) for line in expect[index]]


def case(name: str, *steps: Step, config: Mapping[str, Any] | None = None, about: str = "",
         tallyd_defaults: bool = False) -> Case:
    """A differential case: tallyd's output must equal Etsy's, step by step."""
    return Case(name, tuple(_as_step(s) for s in steps), _config_key(config), about,
                tallyd_defaults=tallyd_defaults)


def divergent(
    name: str,
    *steps: Step,
    tallyd: Sequence[Sequence[str]],
    etsy: Sequence[Sequence[str]] | None = None,
    send_to_etsy: bool = True,
    difference: str,
    config: Mapping[str, Any] | None = None,
    about: str = "",
) -> Case:
    """A case where tallyd deliberately differs: check each side against written expectations.

    ``tallyd`` / ``etsy``: per step, the expected ``name value`` lines. Checked are the lines
    whose name carries the case token plus every line whose name the expectations (of either
    daemon) mention, so an expectation can also pin internal lines such as bad_lines_seen.
    ``send_to_etsy=False`` for inputs that crash Etsy (then ``etsy`` must be None).
    """
    if not send_to_etsy and etsy is not None:
        raise ValueError(f"{name}: etsy expectations for an input not sent to Etsy")
    return Case(
        name, tuple(_as_step(s) for s in steps), _config_key(config), about,
        tallyd=tuple(tuple(s) for s in tallyd),
        etsy=None if etsy is None else tuple(tuple(s) for s in etsy),
        difference=difference, send_to_etsy=send_to_etsy,
    )


def ordered(cases: Iterable[Case]) -> list[Case]:
    """Cases grouped by config (stable), so that a pair serves a run of cases; names unique."""
    cases = list(cases)
    names = collections.Counter(c.name for c in cases)
    dupes = [n for n, count in names.items() if count > 1]
    if dupes:
        raise ValueError(f"duplicate case names: {dupes}")
    first_seen: dict[str, int] = {}
    for index, c in enumerate(cases):
        first_seen.setdefault(c.pair_key, index)
    return sorted(cases, key=lambda c: first_seen[c.pair_key])


def ids(cases: Sequence[Case]) -> list[str]:
    return [c.name for c in cases]


# -- output normalisation --------------------------------------------------------------------


def split_line(line: str) -> tuple[str, str]:
    """``name value ts`` -> (name, value); anything else -> (line, "<not name value ts>").

    The name may contain blanks (tags are not sanitised with keyNameSanitize false).
    """
    parts = line.rsplit(" ", 2)
    if len(parts) == 3 and parts[2].isdigit():
        return parts[0], parts[1]
    return line, "<not name value ts>"


def normalise(lines: Iterable[str]) -> list[tuple[str, str]]:
    result = []
    for line in lines:
        name, value = split_line(line)
        if _TIMING_DEPENDENT.search(name) and not _TOKEN.search(name):
            value = MASK
        result.append((name, value))
    return result


def differential_view(lines: Iterable[str], token: str) -> Counter[str]:
    """Every line except those carrying another case's token, as a multiset of "name value"."""
    view: Counter[str] = Counter()
    for name, value in normalise(lines):
        tokens = _TOKEN.findall(name)
        if tokens and token not in tokens:
            continue
        view[f"{name} {value}"] += 1
    return view


def selected_view(lines: Iterable[str], token: str, names: set[str]) -> Counter[str]:
    """Lines carrying ``token`` or named in ``names``, as a multiset of "name value"."""
    view: Counter[str] = Counter()
    for name, value in normalise(lines):
        if token in name or name in names:
            view[f"{name} {value}"] += 1
    return view


def diff_report(left_label: str, left: Counter[str], right_label: str,
                right: Counter[str]) -> list[str]:
    """Readable differences between two multisets of "name value" lines (empty if equal)."""
    only_left = left - right
    only_right = right - left
    if not only_left and not only_right:
        return []
    by_name_l: dict[str, list[str]] = collections.defaultdict(list)
    by_name_r: dict[str, list[str]] = collections.defaultdict(list)
    for line in only_left.elements():
        name, _, value = line.rpartition(" ")
        by_name_l[name].append(value)
    for line in only_right.elements():
        name, _, value = line.rpartition(" ")
        by_name_r[name].append(value)
    out = []
    both = sorted(set(by_name_l) & set(by_name_r))
    width = max(len(left_label), len(right_label))
    if both:
        out.append(f"  values differ ({left_label} vs {right_label}):")
        for name in both:
            out.append(f"    {name}")
            out.append(f"      {left_label:<{width}} {' '.join(by_name_l.pop(name))}")
            out.append(f"      {right_label:<{width}} {' '.join(by_name_r.pop(name))}")
    if by_name_l:
        out.append(f"  only from {left_label}:")
        out.extend(f"    {n} {v}" for n in sorted(by_name_l) for v in by_name_l[n])
    if by_name_r:
        out.append(f"  only from {right_label}:")
        out.extend(f"    {n} {v}" for n in sorted(by_name_r) for v in by_name_r[n])
    return out


def internal_counter_names(config: Mapping[str, Any], counter: str) -> tuple[str, str | None]:
    """Graphite names of the rate and (if flushed) count of internal counter ``counter``."""
    graphite = config.get("graphite") or {}
    prefix_stats = config.get("prefixStats", "statsd")
    suffix = f".{graphite['globalSuffix']}" if "globalSuffix" in graphite else ""
    key = f"{prefix_stats}.{counter}"
    flush_counts = config.get("flush_counts", True) is not False
    if graphite.get("legacyNamespace", True) is not False:
        rate, count = f"stats.{key}{suffix}", f"stats_counts.{key}{suffix}"
    else:
        parts = [p for p in (graphite.get("globalPrefix", "stats"),
                             graphite.get("prefixCounter", "counters")) if p != ""]
        base = ".".join([*parts, key])
        rate, count = f"{base}.rate{suffix}", f"{base}.count{suffix}"
    return rate, count if flush_counts else None


def packets_received(lines: Iterable[str], config: Mapping[str, Any]) -> float | None:
    rate_name, count_name = internal_counter_names(config, "packets_received")
    values = dict(split_line(line) for line in lines)
    try:
        if count_name is not None:
            return float(values[count_name])
        return float(values[rate_name]) * float(config["flushInterval"]) / 1000
    except (KeyError, ValueError):
        return None


# -- daemons and pairs -----------------------------------------------------------------------


@dataclass
class Daemon:
    """One daemon of a pair with its sink and the index of its last result flush."""

    label: str  # "etsy" or "tallyd" (or "etsy#2" in the self-test)
    proc: DaemonProcess
    sink: GraphiteSink
    grouping: Grouping
    udp: tuple[str, int]
    last_result: int | None = None
    cleanup: list[Path] = field(default_factory=list)

    def started_count(self) -> int:
        return self.sink.started_count(self.grouping)

    def latest_start(self) -> float | None:
        return self.sink.latest_start(self.grouping)

    def send(self, datagrams: Sequence[bytes]) -> None:
        host, _ = self.udp
        assert host == "127.0.0.1", self.udp
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for datagram in datagrams:
                sock.sendto(datagram, self.udp)

    def wait_flush(self, index: int, timeout: float) -> Flush:
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            try:
                return self.sink.wait_for_flush(self.grouping, index,
                                                min(0.5, max(0.0, deadline - time.monotonic())))
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"{self.label}: flush #{index} not complete within {timeout:.1f}s "
                        f"(have {self.started_count()} started)\n{self.proc.describe()}"
                    ) from None

    def check_alive(self) -> None:
        if self.proc.returncode is not None:
            raise AssertionError(f"{self.label} exited unexpectedly\n{self.proc.describe()}")

    def close(self) -> None:
        try:
            if self.proc.returncode is None:
                try:
                    self.proc.stop(timeout=10)
                except DaemonError:
                    pass
            else:
                self.proc.kill()
        finally:
            self.sink.close()
            for path in self.cleanup:
                shutil.rmtree(path, ignore_errors=True)


def _start_etsy_daemon(label: str, config: Mapping[str, Any]) -> Daemon:
    sink = GraphiteSink(settle=SETTLE).start()
    try:
        proc = start_etsy({**config, "graphiteHost": "127.0.0.1", "graphitePort": sink.port})
    except BaseException:
        sink.close()
        raise
    return Daemon(label, proc, sink, "connection", proc.udp)


def _start_tallyd_daemon(config: Mapping[str, Any], flags: Sequence[str] = ()) -> Daemon:
    sink = GraphiteSink(slots=(INTERVAL, SLOT_OFFSET), settle=SETTLE).start()
    config_dir = Path(tempfile.mkdtemp(prefix="tallyd-conformance-"))
    config_path = config_dir / "config.js"
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    try:
        proc = start_aggregator([
            "--etsy-config", str(config_path),
            "--listen", "udp://127.0.0.1:0",
            "--carbon", f"127.0.0.1:{sink.port}",
            "--mgmt-address", "127.0.0.1",
            "--mgmt-port", "0",
            *flags,
        ])
    except BaseException:
        sink.close()
        shutil.rmtree(config_dir, ignore_errors=True)
        raise
    return Daemon("tallyd", proc, sink, "timestamp", proc.udp, cleanup=[config_dir])


@dataclass
class Pair:
    key: str
    reference: Daemon
    candidate: Daemon

    def daemons(self) -> list[Daemon]:
        return [self.reference, self.candidate]

    def close(self) -> None:
        for daemon in self.daemons():
            daemon.close()


def start_pair(key: str) -> Pair:
    """Start Etsy and the candidate for ``key`` (a config key, maybe with a "#pool" suffix)."""
    config_key, _, pools = key.partition("#")
    config = json.loads(config_key)
    flags = () if "defaults" in pools else TALLYD_COMPAT_FLAGS
    reference = _start_etsy_daemon("etsy", config)
    try:
        if CANDIDATE == "etsy":
            candidate = _start_etsy_daemon("etsy#2", config)
        else:
            candidate = _start_tallyd_daemon(config, flags)
    except BaseException:
        reference.close()
        raise
    pair = Pair(key, reference, candidate)
    try:
        # Past the first flush on both before anything is sent.
        for daemon in pair.daemons():
            daemon.wait_flush(0, timeout=4 * INTERVAL + 10)
    except BaseException:
        pair.close()
        raise
    return pair


# -- running cases ---------------------------------------------------------------------------


@dataclass
class StepResult:
    datagrams: list[bytes]
    lines: dict[str, tuple[str, ...]]  # daemon label -> the result flush's lines


class ConformanceRunner:
    """Owns the daemon pairs of a test session and runs cases on them.

    ``schedule`` is the pair key of every collected case, in run order (see tests/conftest.py);
    while one config's cases run, the pair for the next config is started in the background.
    """

    def __init__(self, schedule: Sequence[str] = ()) -> None:
        self._pairs: OrderedDict[str, Pair] = OrderedDict()
        self._pending: dict[str, concurrent.futures.Future[Pair]] = {}
        self._executor = concurrent.futures.ThreadPoolExecutor(PREFETCH, "pair-prefetch")
        self._schedule = list(schedule)
        self._cursor = 0

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        for future in self._pending.values():
            if future.exception() is None:
                future.result().close()
        self._pending.clear()
        while self._pairs:
            _, pair = self._pairs.popitem()
            pair.close()

    def pair(self, key: str) -> Pair:
        """The running pair for ``key`` (a Case.pair_key), started if needed."""
        if key in self._pairs:
            self._pairs.move_to_end(key)
            return self._pairs[key]
        while len(self._pairs) >= MAX_PAIRS:
            _, old = self._pairs.popitem(last=False)
            old.close()
        future = self._pending.pop(key, None)
        pair = future.result() if future is not None else start_pair(key)
        self._pairs[key] = pair
        return pair

    def _prefetch_after(self, key: str) -> None:
        """Start the pairs of the next PREFETCH scheduled configs after ``key``'s cases."""
        try:
            here = self._schedule.index(key, self._cursor)
        except ValueError:
            return
        self._cursor = here
        upcoming: list[str] = []
        for k in self._schedule[here:]:
            if k != key and k not in upcoming:
                upcoming.append(k)
                if len(upcoming) == PREFETCH:
                    break
        for k in upcoming:
            if k not in self._pairs and k not in self._pending:
                self._pending[k] = self._executor.submit(start_pair, k)

    def _discard(self, pair: Pair) -> None:
        if self._pairs.get(pair.key) is pair:
            del self._pairs[pair.key]
        pair.close()

    def run(self, case: Case) -> None:
        """Run ``case``; raise AssertionError with a readable report on any difference."""
        if CANDIDATE == "etsy" and case.divergent and not case.send_to_etsy:
            import pytest

            pytest.skip("self-test mode: this input is for tallyd only")
        self._prefetch_after(case.pair_key)
        for attempt in (1, 2):
            pair = self.pair(case.pair_key)
            daemons = pair.daemons() if case.send_to_etsy else [pair.candidate]
            try:
                results = self._run_steps(pair, daemons, case, strict=attempt == 1)
            except HarnessTimingError as exc:
                self._discard(pair)
                if attempt == 2:
                    raise AssertionError(
                        f"case {case.name}: harness timing failed twice: {exc}") from None
                continue
            except BaseException:
                self._discard(pair)
                raise
            report = self._check(pair, case, results)
            if report:
                self._discard(pair)
                raise AssertionError("\n".join(report))
            return

    # -- synchronisation --

    def _wait_send_window(self, daemons: Sequence[Daemon], *, first_step: bool,
                          empty: bool) -> dict[str, int]:
        """Block until every daemon has just started a flush; return each one's started count.

        The count is the index of the flush that will hold what is sent now. An empty step that
        follows another step needs no window: its result is simply the next flush.
        """
        if empty and not first_step:
            return {d.label: d.last_result + 1 for d in daemons}  # type: ignore[operator]
        deadline = time.monotonic() + 2 * SETTLE_FLUSHES * INTERVAL + 10
        while True:
            now = time.monotonic()
            counts: dict[str, int] = {}
            ready = True
            for daemon in daemons:
                daemon.check_alive()
                count = daemon.started_count()
                latest_start = daemon.latest_start()
                counts[daemon.label] = count
                if latest_start is None:
                    ready = False
                    continue
                latest = count - 1
                if daemon.last_result is not None and latest > daemon.last_result:
                    if not first_step:
                        raise HarnessTimingError(
                            f"{daemon.label} started flush #{latest} before the step could be "
                            f"sent (the previous step's result was #{daemon.last_result})"
                        )
                    if latest - daemon.last_result < SETTLE_FLUSHES:
                        ready = False  # not consecutive: let earlier cases settle on both
                        continue
                if now - latest_start > INTERVAL - GUARD:
                    if not first_step:
                        raise HarnessTimingError(
                            f"{daemon.label}: too late in the interval to send "
                            f"({now - latest_start:.3f}s after flush #{latest})"
                        )
                    ready = False
            if ready:
                return counts
            if now > deadline:
                raise HarnessTimingError("no common send window: "
                                         + ", ".join(f"{d.label} {d.started_count()} flushes"
                                                     for d in daemons))
            time.sleep(0.005)

    def _run_steps(self, pair: Pair, daemons: Sequence[Daemon], case: Case, *,
                   strict: bool) -> list[StepResult]:
        config = case.config
        results = []
        for index in range(len(case.steps)):
            datagrams = case.datagrams(index)
            counts = self._wait_send_window(daemons, first_step=index == 0,
                                            empty=not datagrams)
            for daemon in daemons:
                daemon.send(datagrams)
            for daemon in daemons:
                if datagrams and daemon.started_count() != counts[daemon.label]:
                    raise HarnessTimingError(f"{daemon.label} started a flush while the step "
                                             f"was being sent")
            lines = {}
            for daemon in daemons:
                flush = daemon.wait_flush(counts[daemon.label], timeout=3 * INTERVAL + 5)
                daemon.last_result = counts[daemon.label]
                lines[daemon.label] = flush.lines
            for daemon in daemons:
                got = packets_received(lines[daemon.label], config)
                if got is not None and got != len(datagrams):
                    if daemon is pair.reference or strict:
                        raise HarnessTimingError(
                            f"{daemon.label} counted {got} packets in the result flush of step "
                            f"{index + 1}, {len(datagrams)} were sent")
            results.append(StepResult(datagrams, lines))
        return results

    # -- checking --

    def _check(self, pair: Pair, case: Case, results: Sequence[StepResult]) -> list[str]:
        report: list[str] = []
        ref, cand = pair.reference.label, pair.candidate.label
        for index, result in enumerate(results):
            problems: list[str] = []
            if not case.divergent:
                cand_lines = list(result.lines[cand])
                if case.tallyd_defaults and CANDIDATE == "tallyd":
                    # Defaults add tallyd's own metrics (docs/compatibility.md #22), all under
                    # <prefix_stats>.tallyd.aggregator.<identity>.: set them aside, insist they
                    # are there.
                    extra = [x for x in cand_lines if _SELF_METRICS.search(split_line(x)[0])]
                    if not extra:
                        problems.append("  tallyd with default flags published no self-metrics")
                    cand_lines = [x for x in cand_lines if x not in extra]
                problems += diff_report(
                    ref, differential_view(result.lines[ref], case.token),
                    cand, differential_view(cand_lines, case.token))
            else:
                names = set()
                for who in ("tallyd", "etsy"):
                    for line in case.expected(who, index) or []:  # type: ignore[arg-type]
                        names.add(line.rpartition(" ")[0])
                checks: list[tuple[str, str, list[str]]] = []
                tallyd_expected = case.expected("tallyd", index)
                etsy_expected = case.expected("etsy", index)
                if CANDIDATE == "tallyd":
                    assert tallyd_expected is not None
                    checks.append((cand, "tallyd's documented behaviour", tallyd_expected))
                elif etsy_expected is not None:
                    checks.append((cand, "Etsy's behaviour", etsy_expected))
                if case.send_to_etsy and etsy_expected is not None:
                    checks.append((ref, "Etsy's behaviour", etsy_expected))
                for label, what, expected in checks:
                    want = Counter(f"{n} {v}" for n, v in normalise(
                        f"{line} 0" for line in expected))
                    got = selected_view(result.lines[label], case.token, names)
                    diff = diff_report(f"expected ({what})", want, label, got)
                    if diff:
                        problems.append(f"  {label} differs from {what}:")
                        problems += ["  " + d for d in diff]
            if problems:
                report.append(f"step {index + 1}/{len(results)}: sent "
                              f"{len(result.datagrams)} datagram(s):")
                report += [f"    {d!r}" for d in result.datagrams]
                report += problems
        if not report:
            return []
        header = [
            f"conformance case {case.name!r} ("
            + (f"divergent: {case.difference}" if case.divergent else "must equal Etsy") + ")",
            f"  about: {case.about}" if case.about else "",
            f"  config: {case.config_key}",
            f"  token: {case.token}",
        ]
        # The candidate's log (barrier timeouts, drops, ...) explains most timing surprises.
        return [h for h in header if h] + report + [pair.candidate.proc.describe()]


def js(value: float) -> str:
    """JavaScript's String(n) for the plain numbers written in expectations (no exponents)."""
    if value == int(value) and abs(value) < 1e21:
        return str(int(value))
    text = repr(float(value))
    assert "e" not in text and "n" not in text, f"write {value!r} out by hand"
    return text


def counter_lines(name: str, count: float) -> list[str]:
    """Legacy-namespace lines of a counter: rate (count / interval) and count."""
    return [f"stats.{name} {js(count / INTERVAL)}", f"stats_counts.{name} {js(count)}"]


def bad_lines(n: int, prefix_stats: str = "statsd") -> list[str]:
    """Legacy-namespace lines of the bad_lines_seen internal counter."""
    return counter_lines(f"{prefix_stats}.bad_lines_seen", n)
