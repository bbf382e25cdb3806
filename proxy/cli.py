"""``tallyd-proxy`` / ``python -m proxy``: parse settings, then run `serve` (N times).

Settings come from, lowest precedence first: the defaults, ``--config FILE`` (TOML), then
flags. ``--print-config`` shows the result as TOML, ``--check-config`` validates it.

``--processes N`` (N > 1): the proxy is stateless, so N identical processes share the
listen ports. For each udp/tcp URL the parent binds N sockets to one port with SO_REUSEPORT
(the kernel spreads senders over them; port 0 is resolved by the first bind), and one
shared socket for unix URLs; then it runs N children under `common.supervisor`, each
serving its own set: SIGTERM/SIGINT stop them, SIGHUP is passed on, a child that died is
restarted after 1 s (its sockets stay open in the parent, so nothing queued on them is
lost), one that cannot start (exit 2: its management port is taken, say) ends the proxy with
exit 2, and the parent exits when they have all stopped. Child i's management port is
``mgmt_port + i``.

Every child, restarted ones too, serves the parent's configuration as it was resolved at
start: the parent hands it over in the child's description (`config_description`), and the
child never reads ``--config`` or its flags. The description, auth tokens included, is in
the child's environment (``TALLYD_WORKER``): /proc/<pid>/environ is readable only by the
same user (and root), like the config file should be.

SIGHUP (`proxy.switch.Reloader` applies what it reads): a single process reads ``--config``
and its flags again. A supervisor reads them, and when the aggregator list changed without
``aggregators_from`` it fixes the instant once (`proxy.schedule.switch_instant`) for every
child (a later SIGHUP that leaves the pending list as it is keeps that instant); it writes
the configuration to a file only its user can read (``reload.json`` in a private directory
it removes at exit, named in each child's description), then passes the SIGHUP on: each
child reads that file. A file that does not parse or validate is ``event=reload_failed``
and changes nothing. A child restarted before the instant is started with the list in force
and the pending change (``reload`` in its description), so it switches at the same instant
as the others: it applies the change before its intake runs and never refuses it (started
inside the guard it holds until the instant; after it, it switches at once).

Exit codes: 0 after a clean stop or a passed check; 2 for a bad configuration or command
line; 1 when the process fails while running.

ENTRY.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Final

import attrs
import trio

from common.address import ListenURL
from common.cli import add_version_argument, load_toml
from common.config import (
    add_arguments,
    add_config_arguments,
    apply_arguments,
    config_from_mapping,
    format_toml,
)
from common.errors import ConfigError, find_config_error
from common.listener import BoundSocket, adopt_socket, bind_listener, close_listener
from common.logging import configure_logging, log_event
from common.sdnotify import READY, notify
from common.signals import force_exit, ignore_stop_signal, run_signal_handler
from common.supervisor import (
    CONFIG_ERROR_EXIT,
    LET_GO,
    RESTART,
    ChildExit,
    GiveUp,
    Launch,
    Supervisor,
    Verdict,
    read_worker_description,
)

from .config import ProxyConfig, check_config, classify_reload, plain_value
from .membership import AggregatorSpec
from .schedule import switch_instant
from .server import serve

LOGGER = logging.getLogger("proxy")

#: How long a child that died waits before it is restarted (every time: no growth).
RESTART_PAUSE_SECONDS: Final = 1.0
#: Where a child's configuration comes from, for its error messages.
DESCRIPTION_SOURCE: Final = "the supervisor's description"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tallyd-proxy",
        description="Stateless StatsD sharding proxy: forwards each metric name to exactly "
                    "one aggregator of an ordered list.")
    add_version_argument(parser)
    add_config_arguments(parser)
    add_arguments(parser, ProxyConfig)
    return parser


def load_config(args: argparse.Namespace) -> ProxyConfig:
    """Defaults < file < flags, then the cross-setting checks. Raises `ConfigError`."""
    values = load_toml(args.config) if args.config else {}
    config = config_from_mapping(ProxyConfig, values, source=args.config or "defaults")
    config = apply_arguments(config, args)
    check_config(config)
    return config


def config_description(config: ProxyConfig) -> dict[str, Any]:
    """``config`` as the plain data `config_from_description` reads back (JSON-ready: the
    values ``--print-config`` shows; an unset value is left out, so it stays unset).

    JSON rather than `format_toml`'s text, whose strings do not escape control characters
    (a token may hold one: TOML escapes let a file spell it).
    """
    plain = {f.name: plain_value(f.name, getattr(config, f.name))
             for f in attrs.fields(ProxyConfig)}
    return {name: value for name, value in plain.items() if value is not None}


def config_from_description(values: Mapping[str, Any]) -> ProxyConfig:
    """The configuration a supervisor handed this child, built as a file's is (never the
    file again). Raises `ConfigError`."""
    config = config_from_mapping(ProxyConfig, values, source=DESCRIPTION_SOURCE)
    check_config(config)
    return config


#: A configuration source for a reload (raises `ConfigError`).
Loader = Callable[[], ProxyConfig]


def read_reload_file(path: str) -> ProxyConfig:
    """The configuration a supervisor wrote for its children's reload. Raises
    `ConfigError`."""
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the supervisor's reload file {path}: {e}") from e
    return config_from_description(values["config"])


def queue_reload(load: Loader, reloads: trio.MemorySendChannel[ProxyConfig]) -> None:
    """SIGHUP: read the configuration again and hand it to `serve`."""
    try:
        new = load()
    except ConfigError as e:
        log_event(LOGGER, "reload_failed", level=logging.ERROR, error=str(e))
        return
    try:
        reloads.send_nowait(new)
    except trio.WouldBlock:
        log_event(LOGGER, "reload_skipped", level=logging.WARNING, reason="reload_in_progress")


async def run(config: ProxyConfig, bound: list[BoundSocket] | None, index: int,
              load: Loader, pending: ProxyConfig | None = None) -> None:
    """`serve` until a stop signal, applying a reload on every SIGHUP (and ``pending``,
    a change its supervisor scheduled before this process started, at once)."""
    stop = trio.Event()
    reload_send, reload_receive = trio.open_memory_channel[ProxyConfig](4)
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(run_signal_handler, on_stop=stop.set, on_force=force_exit,
                                    on_reload=partial(queue_reload, load, reload_send)))
        async with trio.open_nursery() as serving:
            await serving.start(partial(serve, config, shutdown_trigger=stop.wait, bound=bound,
                                        process_index=index,
                                        reload_trigger=reload_receive.receive, pending=pending))
            # systemd's Type=notify: every process of --processes says so (NotifyAccess=all)
            notify(READY)
        nursery.cancel_scope.cancel()


def run_one(config: ProxyConfig, bound: list[BoundSocket] | None, index: int,
            load: Loader, pending: ProxyConfig | None = None) -> int:
    try:
        trio.run(run, config, bound, index, load, pending)
        ignore_stop_signal()
    except (Exception, KeyboardInterrupt) as e:
        error = find_config_error(e)
        if error is None:
            raise
        log_event(LOGGER, "config_error", level=logging.ERROR, error=str(error))
        return CONFIG_ERROR_EXIT
    return 0


def adopt_sockets(config: ProxyConfig, description: Mapping[str, Any]) -> list[BoundSocket]:
    """The socket set a supervisor passed this process (`ProcessSet.launch`).

    Raises:
        ConfigError: the set does not match ``listen`` (exit 2: restarting cannot help).
    """
    fds = description["fds"]
    if len(fds) != len(config.listen):
        raise ConfigError(f"the supervisor passed {len(fds)} sockets for "
                          f"{len(config.listen)} listen URLs")
    return [adopt_socket(url, socket.socket(fileno=fd))
            for url, fd in zip(config.listen, fds, strict=True)]


def run_child(config: ProxyConfig, description: Mapping[str, Any]) -> int:
    """Serve the socket set and the configuration a supervisor passed (`ProcessSet`)."""
    try:
        bound = adopt_sockets(config, description)
        pending = description.get("reload")
        scheduled = config_from_description(pending) if pending is not None else None
    except ConfigError as e:
        log_event(LOGGER, "config_error", level=logging.ERROR, error=str(e))
        return CONFIG_ERROR_EXIT
    path = description.get("reload_file")
    load: Loader = partial(read_reload_file, path) if path else no_reload_file
    return run_one(config, bound, description["index"], load, scheduled)


def no_reload_file() -> ProxyConfig:
    raise ConfigError("this process's supervisor named no reload file")


def bind_groups(config: ProxyConfig) -> list[list[BoundSocket]]:
    """One socket set per process: SO_REUSEPORT groups for udp/tcp, shared unix sockets."""
    groups: list[list[BoundSocket]] = [[] for _ in range(config.processes)]
    try:
        for url in config.listen:
            shared = url.scheme in ("unix", "unixgram")
            first = bind_listener(url, receive_buffer_bytes=config.udp_receive_buffer_bytes,
                                  reuse_port=not shared)
            groups[0].append(first)
            port = int(first.address.rpartition(":")[2]) if not shared else 0
            for group in groups[1:]:
                if shared:
                    group.append(first)
                    continue
                fixed = ListenURL(scheme=url.scheme, host=url.host, port=port)
                sock = bind_listener(fixed, reuse_port=True,
                                     receive_buffer_bytes=config.udp_receive_buffer_bytes)
                group.append(attrs.evolve(sock, url=url))
    except ConfigError:
        for sock in {id(s): s for g in groups for s in g}.values():
            close_listener(sock)
        raise
    return groups


@attrs.define
class ProcessSet:
    """The proxy's `common.supervisor.ChildPolicy`: child i serves socket set i with the
    parent's configuration (the reloaded one, after a SIGHUP: `reload`).

    Attributes:
        reload_file: where `reload` writes the configuration the children read on SIGHUP.
        previous: the aggregator list in force until ``switch_at``, while a change is
            scheduled (a child started meanwhile serves it, and the change as pending).
    """

    config: ProxyConfig
    groups: list[list[BoundSocket]]
    reload_file: str | None = None
    previous: tuple[AggregatorSpec, ...] | None = None
    switch_at: float = 0.0
    wall_clock: Callable[[], float] = time.time

    @property
    def processes(self) -> int:
        return self.config.processes

    def launch(self, index: int, generation: int) -> Launch:
        fds = [b.sock.fileno() for b in self.groups[index]]
        description: dict[str, Any] = {"index": index, "fds": fds,
                                       "config": config_description(self.config)}
        if self.reload_file is not None:
            description["reload_file"] = self.reload_file
        if self.previous is not None and self.wall_clock() < self.switch_at:
            # Inside the guard too: the child holds, then switches at the others' instant.
            description["config"] = config_description(
                attrs.evolve(self.config, aggregator=self.previous))
            description["reload"] = config_description(self.config)
        return Launch(description=description, pass_fds=tuple(dict.fromkeys(fds)))

    def reload(self, load: Loader) -> bool:
        """SIGHUP: load the configuration, fix a list change's instant for every child,
        and write it to `reload_file`; False (nothing to pass on) when it fails."""
        try:
            new = load()
        except ConfigError as e:
            log_event(LOGGER, "reload_failed", level=logging.ERROR, error=str(e))
            return False
        now = self.wall_clock()
        switching = self.previous is not None and now < self.switch_at
        in_force = self.previous if switching and self.previous else self.config.aggregator
        changes = classify_reload(self.config, new)
        for name in changes.refused:  # the children are handed the old value
            log_event(LOGGER, "reload_refused", level=logging.WARNING, setting=name,
                      reason="restart_required")
        config = changes.config
        if config.aggregator == in_force:
            self.previous = None
        elif changes.aggregator_changed:
            try:
                at = switch_instant(now, interval=config.flush_interval,
                                    requested=config.aggregators_from,
                                    margin=config.switch_margin, guard=config.switch_guard)
            except ConfigError as e:  # the children are handed the list they have
                log_event(LOGGER, "reload_refused", level=logging.ERROR, setting="aggregator",
                          reason="aggregators_from_passed", error=e.message)
                config = attrs.evolve(config, aggregator=self.config.aggregator)
            else:
                config = attrs.evolve(config, aggregators_from=at)
                self.previous, self.switch_at = in_force, at
        elif switching:  # the same change, still pending: keep the instant fixed for it
            config = attrs.evolve(config, aggregators_from=self.switch_at)
        self.config = config
        if self.reload_file is None:
            return True
        text = json.dumps({"config": config_description(config)})
        fresh = f"{self.reload_file}.new"
        fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(fresh, self.reload_file)
        log_event(LOGGER, "reload_passed_on", processes=self.processes,
                  aggregators_from=f"{config.aggregators_from:.3f}")
        return True

    def judge(self, child: ChildExit) -> Verdict | GiveUp:
        if child.exit_code == CONFIG_ERROR_EXIT:
            # A child that cannot start (its management port is taken, say) ends the proxy with
            # its reason (logged by the child) and exit 2, rather than running short a process.
            return GiveUp(exit_code=CONFIG_ERROR_EXIT, reason="cannot start")
        if child.stopping or child.exit_code == 0:
            return LET_GO
        log_event(LOGGER, "process_died", level=logging.ERROR, process=child.index,
                  pid=child.pid, exit_code=child.exit_code)
        return RESTART

    def restart_pause(self, quick_deaths: int) -> float:
        return RESTART_PAUSE_SECONDS

    async def announce(self, pids: Sequence[int], stopping: trio.Event) -> None:
        # runtime_dir: where reload.json lives (removed at exit; a supervisor SIGKILLed
        # cannot, so whoever killed it can, from this line).
        log_event(LOGGER, "supervising", processes=self.processes,
                  pids=",".join(str(p) for p in pids),
                  runtime_dir=os.path.dirname(self.reload_file) if self.reload_file else "")


@attrs.define
class ProxySupervisor(Supervisor):
    """The common supervisor, with SIGHUP passed on only once `ProcessSet.reload` wrote
    what the children are to read."""

    on_hangup: Callable[[], bool] = lambda: True

    def forward(self, signum: int) -> None:
        if signum == signal.SIGHUP and not self.on_hangup():
            return
        super().forward(signum)


def supervise(config: ProxyConfig, argv: Sequence[str], load: Loader) -> int:
    """Run ``config.processes`` children and supervise them (module docstring)."""
    groups = bind_groups(config)
    private = tempfile.mkdtemp(prefix="tallyd-proxy-")  # mode 0700
    processes = ProcessSet(config=config, groups=groups,
                           reload_file=os.path.join(private, "reload.json"))
    supervisor = ProxySupervisor(processes, module="proxy", argv=argv,
                                 count=config.processes,
                                 graceful_timeout=config.graceful_timeout,
                                 on_hangup=partial(processes.reload, load))
    try:
        outcome = trio.run(supervisor.run)
        ignore_stop_signal()
    finally:
        for sock in {id(s): s for g in groups for s in g}.values():
            close_listener(sock)  # a unix socket's file goes with the parent, which bound it
        shutil.rmtree(private, ignore_errors=True)
    return outcome.exit_status()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    description = read_worker_description()
    try:
        # A child serves its supervisor's configuration; it ignores --config and the flags.
        config = load_config(args) if description is None else \
            config_from_description(description["config"])
    except ConfigError as e:
        print(f"tallyd-proxy: configuration error: {e}", file=sys.stderr)
        return 2
    configure_logging(config.log_level)
    if args.print_config:
        sys.stdout.write(format_toml(config, plain=plain_value))
        return 0
    if args.check_config:
        print("configuration ok", file=sys.stderr)
        return 0
    if description is not None:
        return run_child(config, description)
    load = partial(load_config, args)
    if config.processes == 1:
        return run_one(config, None, 0, load)
    try:
        return supervise(config, argv, load)
    except ConfigError as e:
        log_event(LOGGER, "config_error", level=logging.ERROR, error=str(e))
        return 2
