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
child never reads ``--config`` or its flags again, so editing or removing the file changes
nothing until the proxy itself is restarted. The description, auth tokens included, is in
the child's environment (``TALLYD_WORKER``): /proc/<pid>/environ is readable only by the
same user (and root), like the config file should be.

Exit codes: 0 after a clean stop or a passed check; 2 for a bad configuration or command
line; 1 when the process fails while running.

ENTRY.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from collections.abc import Mapping, Sequence
from functools import partial
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

from .config import ProxyConfig, check_config, plain_value
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


def ignore_reload() -> None:
    log_event(LOGGER, "reload_ignored", detail="restart the proxy to change its settings")


async def run(config: ProxyConfig, bound: list[BoundSocket] | None, index: int) -> None:
    """`serve` until a stop signal."""
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(run_signal_handler, on_stop=stop.set, on_force=force_exit,
                                    on_reload=ignore_reload))
        await serve(config, shutdown_trigger=stop.wait, bound=bound, process_index=index)
        nursery.cancel_scope.cancel()


def run_one(config: ProxyConfig, bound: list[BoundSocket] | None, index: int) -> int:
    try:
        trio.run(run, config, bound, index)
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
    except ConfigError as e:
        log_event(LOGGER, "config_error", level=logging.ERROR, error=str(e))
        return CONFIG_ERROR_EXIT
    return run_one(config, bound, description["index"])


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


@attrs.frozen
class ProcessSet:
    """The proxy's `common.supervisor.ChildPolicy`: child i serves socket set i with the
    parent's configuration."""

    config: ProxyConfig
    groups: list[list[BoundSocket]]

    @property
    def processes(self) -> int:
        return self.config.processes

    def launch(self, index: int, generation: int) -> Launch:
        fds = [b.sock.fileno() for b in self.groups[index]]
        return Launch(description={"index": index, "fds": fds,
                                   "config": config_description(self.config)},
                      pass_fds=tuple(dict.fromkeys(fds)))

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
        log_event(LOGGER, "supervising", processes=self.processes,
                  pids=",".join(str(p) for p in pids))


def supervise(config: ProxyConfig, argv: Sequence[str]) -> int:
    """Run ``config.processes`` children and supervise them (module docstring)."""
    groups = bind_groups(config)
    supervisor = Supervisor(ProcessSet(config=config, groups=groups),
                            module="proxy", argv=argv, count=config.processes,
                            graceful_timeout=config.graceful_timeout)
    try:
        outcome = trio.run(supervisor.run)
        ignore_stop_signal()
    finally:
        for sock in {id(s): s for g in groups for s in g}.values():
            close_listener(sock)  # a unix socket's file goes with the parent, which bound it
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
    if config.processes == 1:
        return run_one(config, None, 0)
    try:
        return supervise(config, argv)
    except ConfigError as e:
        log_event(LOGGER, "config_error", level=logging.ERROR, error=str(e))
        return 2
