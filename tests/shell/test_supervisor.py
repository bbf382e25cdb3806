"""The common supervisor with a fake policy and tiny real children (``python -m`` of a module
written to a temporary directory): restarts and their pauses, give-ups, the stop signal, and
the outcome; and each role's restart pauses."""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from pathlib import Path

import attrs
import pytest
import trio

from aggregator.workers.pool import WorkerPool
from common.supervisor import (
    LET_GO,
    RESTART,
    ChildExit,
    GiveUp,
    Launch,
    Outcome,
    Supervisor,
    Verdict,
)
from proxy.cli import ProcessSet
from proxy.config import ProxyConfig

#: The child: exits with the code its description gives for its generation, or, for a code
#: of "wait", waits for a signal.
CHILD = """
import signal
import sys

from common.supervisor import read_worker_description
description = read_worker_description()
code = description["codes"][min(description["generation"], len(description["codes"]) - 1)]
if code == "wait":
    signal.pause()
sys.exit(code)
"""


PAUSE = 0.05


@attrs.define
class FakePolicy:
    """Children exit with ``codes[index][generation]``; an exit code in ``give_up`` gives up;
    the restart pause is `PAUSE` per quick death in a row."""

    codes: Sequence[Sequence[int | str]]
    give_up: frozenset[int] = frozenset()
    launched: list[tuple[int, int]] = attrs.field(factory=list)
    judged: list[ChildExit] = attrs.field(factory=list)
    announced: trio.Event = attrs.field(factory=trio.Event)

    def launch(self, index: int, generation: int) -> Launch:
        self.launched.append((index, generation))
        return Launch(description={"codes": list(self.codes[index]), "generation": generation},
                      pass_fds=())

    def judge(self, child: ChildExit) -> Verdict | GiveUp:
        self.judged.append(child)
        if child.exit_code in self.give_up:
            return GiveUp(exit_code=child.exit_code, reason="cannot start")
        return LET_GO if child.stopping or child.exit_code == 0 else RESTART

    def restart_pause(self, quick_deaths: int) -> float:
        return PAUSE * quick_deaths

    async def announce(self, pids: Sequence[int], stopping: trio.Event) -> None:
        assert len(pids) == len(self.codes)
        self.announced.set()


@pytest.fixture
def child_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "fake_child.py").write_text(CHILD)
    root = str(Path(__file__).resolve().parents[2])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), root]))
    return "fake_child"


def supervisor_for(policy: FakePolicy, module: str) -> Supervisor:
    return Supervisor(policy, module=module, argv=[], count=len(policy.codes),
                      graceful_timeout=5.0)


CASES = {
    # name: (codes per child, give_up codes, exit status, launches)
    "clean exits are let go": ([[0], [0]], frozenset(), 0, [(0, 0), (1, 0)]),
    "a death is restarted": ([[3, 0]], frozenset(), 0, [(0, 0), (0, 1)]),
    "quick deaths in a row": ([[3, 3, 0]], frozenset(), 0, [(0, 0), (0, 1), (0, 2)]),
    "a give-up ends with its code": ([[2]], frozenset({2}), 2, [(0, 0)]),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_children_end_as_their_policy_says(child_module: str, case: str) -> None:
    codes, give_up, status, launches = CASES[case]
    policy = FakePolicy(codes=codes, give_up=give_up)
    outcome = await supervisor_for(policy, child_module).run()
    assert outcome.exit_status() == status
    assert sorted(policy.launched) == launches
    restarted = [c for c in policy.judged if not c.stopping and c.exit_code not in (0, *give_up)]
    # the n-th quick death in a row: restart n, after the policy's pause for n deaths
    assert [(c.restarts, c.restart_in) for c in restarted] == [
        (n, PAUSE * n) for n in range(1, len(restarted) + 1)]


async def test_give_up_stops_the_other_children(child_module: str) -> None:
    policy = FakePolicy(codes=[["wait"], [2]], give_up=frozenset({2}))
    outcome = await supervisor_for(policy, child_module).run()
    assert outcome.gave_up == (1, GiveUp(exit_code=2, reason="cannot start"))
    assert outcome.exit_codes[0] == -signal.SIGTERM
    assert outcome.exit_status() == 2


async def test_sigterm_stops_every_child_cleanly(child_module: str) -> None:
    policy = FakePolicy(codes=[["wait"], ["wait"]])
    supervisor = supervisor_for(policy, child_module)
    outcome: list[Outcome] = []

    async def run() -> None:
        outcome.append(await supervisor.run())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        with trio.fail_after(20):
            await policy.announced.wait()
        os.kill(os.getpid(), signal.SIGTERM)
    assert outcome[0].exit_codes == {0: -signal.SIGTERM, 1: -signal.SIGTERM}
    assert outcome[0].exit_status() == 0 and not supervisor.alive()
    assert all(c.stopping for c in policy.judged)


@pytest.mark.parametrize(("codes", "status"), [
    ({0: 0, 1: -signal.SIGTERM}, 0),
    ({0: 0, 1: 1}, 1),
    ({0: -signal.SIGKILL}, 1),
])
def test_outcome_exit_status_counts_unclean_stops(codes: dict[int, int], status: int) -> None:
    assert Outcome(exit_codes=codes, gave_up=None).exit_status() == status


def test_each_role_keeps_its_restart_pauses() -> None:
    """The aggregator's workers: 0.5 s doubling up to 30 s, no jitter; the proxy's
    processes: 1 s every time (as before the common supervisor)."""
    deaths = range(1, 10)
    aggregator = [WorkerPool.restart_pause(None, n) for n in deaths]  # type: ignore[arg-type]
    assert aggregator == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    proxy = ProcessSet(config=ProxyConfig(aggregator=("127.0.0.1:9",)), groups=[])
    assert [proxy.restart_pause(n) for n in deaths] == [1.0] * 9
