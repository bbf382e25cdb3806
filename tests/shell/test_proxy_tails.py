"""The pipeline's kept-back tails: a partly filled datagram leaves once its oldest line is
``max_batch_delay_ms`` old, not sooner; one that fills first leaves full at once."""

from __future__ import annotations

import trio
import trio.testing

from common.config import config_from_mapping
from proxy.config import ProxyConfig
from proxy.pipeline import Pipeline
from proxy.routing import MAIN


class FakeForwarder:
    """Records what the pipeline hands over, with the (mock) time."""

    def __init__(self, offers: list[tuple[float, int, list[bytes]]], index: int) -> None:
        self.offers = offers
        self.index = index

    def offer(self, chunks: list[bytes], worker: int = MAIN) -> None:
        self.offers.append((trio.current_time(), self.index, list(chunks)))


def make_pipeline(offers: list[tuple[float, int, list[bytes]]], **values: object) -> Pipeline:
    mapping = {"listen": ["udp://127.0.0.1:0"], "aggregator": ["127.0.0.1:9"],
               "mgmt_port": 0, "http": "127.0.0.1:0", "max_batch_delay_ms": 100,
               "max_datagram_bytes": 64, **values}
    pipeline = Pipeline(config_from_mapping(ProxyConfig, mapping))
    pipeline.forwarders = [FakeForwarder(offers, 0)]  # type: ignore[list-item]
    return pipeline


async def test_tail_leaves_its_delay_after_its_oldest_line(
        autojump_clock: trio.testing.MockClock) -> None:
    offers: list[tuple[float, int, list[bytes]]] = []
    pipeline = make_pipeline(offers)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pipeline.run_tail_flusher)
        start = trio.current_time()
        pipeline.router.route_many([b"a:1|c"])
        pipeline.dispatch()
        await trio.sleep(0.06)
        pipeline.router.route_many([b"b:1|c"])  # joins the same tail: no new delay
        pipeline.dispatch()
        await trio.sleep(0.2)
        assert offers == [(start + 0.1, 0, [b"a:1|c\nb:1|c"])]
        assert pipeline.tail_since == {}
        nursery.cancel_scope.cancel()


async def test_tail_begun_after_a_full_datagram_waits_its_own_delay(
        autojump_clock: trio.testing.MockClock) -> None:
    offers: list[tuple[float, int, list[bytes]]] = []
    pipeline = make_pipeline(offers)
    line = b"x" * 20 + b":1|c"  # 24 bytes: two fill most of a 64-byte datagram
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pipeline.run_tail_flusher)
        start = trio.current_time()
        pipeline.router.route_many([line])
        pipeline.dispatch()
        await trio.sleep(0.08)
        pipeline.router.route_many([line, line])  # fills the first datagram, begins a tail
        pipeline.dispatch()
        assert offers == [(start + 0.08, 0, [line + b"\n" + line])]
        await trio.sleep(0.05)  # the first tail's deadline passed: the new one stays
        assert len(offers) == 1
        await trio.sleep(0.1)
        assert offers[1] == (start + 0.18, 0, [line])
        nursery.cancel_scope.cancel()


async def test_final_dispatch_sends_every_tail_at_once(
        autojump_clock: trio.testing.MockClock) -> None:
    offers: list[tuple[float, int, list[bytes]]] = []
    pipeline = make_pipeline(offers)
    pipeline.router.route_many([b"a:1|c"])
    pipeline.dispatch()
    assert offers == []
    pipeline.dispatch(final=True)
    assert [chunks for _, _, chunks in offers] == [[b"a:1|c"]]
    assert pipeline.tail_since == {}
