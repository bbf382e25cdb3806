"""One supervisor for every role: N copies of the daemon's own command as child processes.

The role binds its sockets first and hands the supervisor a `ChildPolicy`, which says what
child ``index`` inherits (a JSON description, put in the `WORKER_ENV` environment variable,
and the file descriptors it names) and what a child's exit means (`RESTART`, `LET_GO`, or
`GiveUp`, which stops the others and ends the supervisor with an exit code). The children
run ``python -m <module> <the same arguments>``; each sees the description with
`read_worker_description` and serves what it was handed instead of binding its own.

* A child that dies is restarted after a pause its policy chooses
  (`ChildPolicy.restart_pause`) from how many times in a row it died within
  `HEALTHY_AFTER_SECONDS` of its start; its restart count is its ``generation``.
* Signals are the supervisor's before any child starts (`common.signals`): SIGHUP is passed
  on; SIGTERM/SIGINT stop every child with SIGTERM and wait for them, at most the role's
  ``graceful_timeout`` plus `STOP_MARGIN_SECONDS`, then SIGKILL the stragglers
  (``worker_killed``).
* `Supervisor.run` returns once every child has exited; `Outcome.exit_status` is 0 when
  all stopped cleanly (exit 0, or death by the SIGTERM a service manager may also send
  them straight), else 1, or the exit code of a `GiveUp`.

SHELL.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, Final, Protocol

import attrs
import trio

from .logging import log_event
from .signals import run_signal_handler

LOGGER = logging.getLogger(__name__)

#: The environment variable that describes a child's place (JSON, `Launch.description`).
WORKER_ENV: Final = "TALLYD_WORKER"
#: A child that ran this long is considered healthy again: its count of quick deaths, which
#: its policy's restart pause depends on, starts over.
HEALTHY_AFTER_SECONDS: Final = 60.0
#: Extra time over a role's graceful_timeout before children still running are killed.
STOP_MARGIN_SECONDS: Final = 5.0
#: The exit code of a child that stopped on a configuration error (as every CLI's).
CONFIG_ERROR_EXIT: Final = 2


def read_worker_description() -> dict[str, Any] | None:
    """The description a supervisor gave this process, or None when it runs on its own."""
    value = os.environ.get(WORKER_ENV)
    return json.loads(value) if value else None


@attrs.frozen
class Launch:
    """What child ``index`` is handed: its description and the descriptors it inherits."""

    description: Mapping[str, object]
    pass_fds: tuple[int, ...]


@attrs.frozen
class ChildExit:
    """A child that exited, for its policy to judge."""

    index: int
    pid: int
    exit_code: int
    #: Whether the supervisor was stopping it (its verdict then only counts if `GiveUp`).
    stopping: bool
    #: The generation a restart would have, and how long the supervisor would wait first.
    restarts: int
    restart_in: float


class Verdict(enum.Enum):
    RESTART = "restart"
    #: Not restarted: it ended for good, and its exit code counts as a stopped child's.
    LET_GO = "let_go"


RESTART: Final = Verdict.RESTART
LET_GO: Final = Verdict.LET_GO


@attrs.frozen
class GiveUp:
    """A child that can never serve: stop every child and end with ``exit_code``."""

    exit_code: int
    reason: str


class ChildPolicy(Protocol):
    """The role's part of supervision."""

    def launch(self, index: int, generation: int) -> Launch:
        """What child ``index`` inherits, started for the ``generation``-th time (0 first)."""
        ...

    def judge(self, child: ChildExit) -> Verdict | GiveUp:
        """What ``child``'s exit means (and the log line that says so)."""
        ...

    def restart_pause(self, quick_deaths: int) -> float:
        """Seconds to wait before restarting a child that died ``quick_deaths`` times in a
        row (1 or more), each within `HEALTHY_AFTER_SECONDS` of its start."""
        ...

    async def announce(self, pids: Sequence[int], stopping: trio.Event) -> None:
        """Run once every child has been started once (say the daemon is up)."""
        ...


@attrs.frozen
class Outcome:
    """How the children ended: the last exit code of each, and the first give-up."""

    exit_codes: Mapping[int, int]
    gave_up: tuple[int, GiveUp] | None

    def failed(self) -> dict[int, int]:
        """The children that did not stop cleanly, by index."""
        return {i: c for i, c in self.exit_codes.items() if c not in (0, -signal.SIGTERM)}

    def exit_status(self) -> int:
        if self.gave_up is not None:
            return self.gave_up[1].exit_code
        return 1 if self.failed() else 0


@attrs.define
class Supervisor:
    """Runs ``count`` children of ``python -m module *argv`` under ``policy``.

    Args:
        graceful_timeout: the role's; the children get it and `STOP_MARGIN_SECONDS` to stop
            before they are killed.
    """

    policy: ChildPolicy
    module: str
    argv: Sequence[str]
    count: int
    graceful_timeout: float
    _procs: dict[int, trio.Process] = attrs.field(factory=dict, init=False)
    _exit_codes: dict[int, int] = attrs.field(factory=dict, init=False)
    _gave_up: list[tuple[int, GiveUp]] = attrs.field(factory=list, init=False)
    _stopping: trio.Event = attrs.field(factory=trio.Event, init=False)
    _spawned: set[int] = attrs.field(factory=set, init=False)

    def alive(self) -> bool:
        """Whether a child may still be running."""
        return any(p.returncode is None for p in self._procs.values())

    async def run(self) -> Outcome:
        """Start the children and keep them until they have all stopped."""
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(run_signal_handler, on_stop=partial(self.stop, nursery),
                                        on_reload=partial(self.forward, signal.SIGHUP)))
            async with trio.open_nursery() as children:
                for index in range(self.count):
                    children.start_soon(self.keep_child, index, nursery)
            nursery.cancel_scope.cancel()  # the signal loop and any announcement
        return Outcome(exit_codes=dict(self._exit_codes),
                       gave_up=self._gave_up[0] if self._gave_up else None)

    def forward(self, signum: int) -> None:
        for proc in self._procs.values():
            if proc.returncode is None:
                proc.send_signal(signum)

    def stop(self, nursery: trio.Nursery) -> None:
        """Stop every child (SIGTERM); kill those still running after the stop timeout."""
        if not self._stopping.is_set():
            self._stopping.set()
            self.forward(signal.SIGTERM)
            nursery.start_soon(self.kill_stragglers)

    async def kill_stragglers(self) -> None:
        await trio.sleep(self.graceful_timeout + STOP_MARGIN_SECONDS)
        for index, proc in self._procs.items():
            if proc.returncode is None:
                log_event(LOGGER, "worker_killed", level=logging.ERROR, worker=index,
                          reason="graceful_timeout")
                proc.kill()

    async def keep_child(self, index: int, nursery: trio.Nursery) -> None:
        """Run child ``index``, restarting it as its policy says, until it ends for good."""
        generation = 0
        quick_deaths = 0
        while True:
            started = trio.current_time()
            proc = await self.spawn(index, generation, nursery)
            code = await proc.wait()
            stopping = self._stopping.is_set()
            if not stopping:
                quick_deaths = 1 if trio.current_time() - started > HEALTHY_AFTER_SECONDS \
                    else quick_deaths + 1
            pause = self.policy.restart_pause(max(quick_deaths, 1))
            verdict = self.policy.judge(ChildExit(
                index=index, pid=proc.pid, exit_code=code, stopping=stopping,
                restarts=generation + 1, restart_in=pause))
            self._exit_codes[index] = code
            if isinstance(verdict, GiveUp):
                self._gave_up.append((index, verdict))
                self.stop(nursery)
                return
            if stopping or verdict is LET_GO:
                return
            with trio.move_on_after(pause):
                await self._stopping.wait()
            if self._stopping.is_set():
                return
            generation += 1

    async def spawn(self, index: int, generation: int, nursery: trio.Nursery) -> trio.Process:
        launch = self.policy.launch(index, generation)
        env = dict(os.environ, **{WORKER_ENV: json.dumps(launch.description)})
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", self.module, *self.argv], env=env,
            pass_fds=launch.pass_fds, stdin=subprocess.DEVNULL)
        self._procs[index] = proc
        if self._stopping.is_set():
            proc.send_signal(signal.SIGTERM)  # the stop was passed on while it started
        self._spawned.add(index)
        if generation == 0 and len(self._spawned) == self.count:
            pids = [self._procs[i].pid for i in range(self.count)]
            nursery.start_soon(self.policy.announce, pids, self._stopping)
        return proc
