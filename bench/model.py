"""A model of tallyd's loss-free rate at W workers on a host with W cores, from per-line
costs the benchmark measured (bench/scaling.py prints it from its own figures).

The cost of a line, in CPU microseconds summed over all of an aggregator's processes::

    cost(W, per, foreign) = receive / per + ingest + foreign * forward + (W > 1) * spread

* ``receive``: per datagram (the system call, the wake-up, the datagram's object), from the
  difference between 1 and 20 lines per datagram at W = 1:
  ``receive = (cost_1 - cost_20) * 20 / 19``;
* ``ingest``: per line a worker owns (parse, aggregate): ``cost_20 - receive / 20``;
* ``forward``: per line a worker reads but does not own (encode, send to the owner, receive
  and parse there), from W = 2 fed directly, where half the lines are foreign:
  ``forward = (cost_W2 - cost_W1 - spread) / (1/2)``;
* ``foreign``: the fraction of lines read by a worker that does not own them: (W-1)/W for
  traffic straight from clients (any worker reads any datagram), 0 through proxies that send
  each line to its owner's endpoint;
* ``spread``: what W > 1 costs per line even with no foreign line (the supervisor, the
  barrier of a flush, a second process's wake-ups), from W = 2 behind a proxy with
  per-worker endpoints minus W = 1 (0 when that was not measured).

The loss-free rate scales from what W = 1 reached, ``base_rate`` lines/s on one core::

    rate(W) = base_rate * W * cost(1, per, 0) / cost(W, per, foreign)

Assumptions: each worker has a core of its own (and the sender, the proxies and the NIC are
elsewhere and not the limit); a worker stays loss-free up to the same share of its core as
W = 1 did; the kernel spreads datagrams evenly over the readers; the per-line costs do not
depend on W. The last one is optimistic for direct traffic: a worker's foreign lines go to
W-1 owners, so its batches to each get smaller as W grows, and a batch's fixed costs are
spread over fewer lines; the model does not charge that.

CORE (pure arithmetic).
"""

from __future__ import annotations

from dataclasses import dataclass

#: The worker counts the issue asks about.
MODEL_WORKERS = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class LineCosts:
    """Per-line CPU costs in microseconds (see the module docstring)."""

    receive_us: float  # per datagram
    ingest_us: float  # per owned line
    forward_us: float  # per foreign line
    spread_us: float  # per line, when W > 1
    base_rate: float  # W = 1's loss-free rate at ``base_per`` lines/datagram, lines/s
    base_per: int


def derive_costs(*, w1_per20_us: float, w1_per1_us: float, w2_direct_us: float,
                 w2_proxied_us: float | None, base_rate: float) -> LineCosts:
    """The model's costs from four measured CPU-per-line figures (20 lines/datagram unless
    named per1). Differences that noise makes negative are taken as 0."""
    receive = max(0.0, (w1_per1_us - w1_per20_us) * 20 / 19)
    ingest = max(0.0, w1_per20_us - receive / 20)
    spread = 0.0 if w2_proxied_us is None else max(0.0, w2_proxied_us - w1_per20_us)
    forward = max(0.0, (w2_direct_us - w1_per20_us - spread) * 2)
    return LineCosts(receive, ingest, forward, spread, base_rate, 20)


def line_cost(costs: LineCosts, workers: int, per: int, foreign: float) -> float:
    """CPU microseconds per line at ``workers`` workers, ``per`` lines/datagram, with a
    ``foreign`` fraction of the lines read by a worker that does not own them."""
    return (costs.receive_us / per + costs.ingest_us + foreign * costs.forward_us
            + (costs.spread_us if workers > 1 else 0.0))


def direct_foreign(workers: int) -> float:
    """Foreign fraction for traffic straight from clients: (W-1)/W."""
    return (workers - 1) / workers


def predicted_rate(costs: LineCosts, workers: int, foreign: float) -> float:
    """Loss-free lines/s at ``workers`` workers on as many cores (``base_per`` lines/dgram)."""
    one = line_cost(costs, 1, costs.base_per, 0.0)
    return costs.base_rate * workers * one / line_cost(costs, workers, costs.base_per, foreign)


def model_rows(costs: LineCosts,
               workers: tuple[int, ...] = MODEL_WORKERS) -> list[tuple[int, float, float,
                                                                         float, float]]:
    """Per W: (W, cost direct, rate direct, cost through proxies, rate through proxies)."""
    rows = []
    for w in workers:
        direct = direct_foreign(w)
        rows.append((w, line_cost(costs, w, costs.base_per, direct),
                     predicted_rate(costs, w, direct),
                     line_cost(costs, w, costs.base_per, 0.0),
                     predicted_rate(costs, w, 0.0)))
    return rows
