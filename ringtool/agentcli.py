"""``tallyd-ring agent``: the ring agent's command line (the routes are ringtool/agent.py).

``tallyd-ring agent --data-dir DIR [--listen HOST:PORT] [--token-file FILE]
[--max-upload-bytes N] [--request-timeout-seconds S] [--max-connections N]
[--log-level LEVEL]``

It logs ``event=listening kind=http address=HOST:PORT`` once bound (port 0 picks a free port;
tests read the line), then ``event=started``. SIGTERM or SIGINT stop it (exit 0); a second
Ctrl-C exits at once. Bad input (flags, a data dir that is not a directory, an empty or
unreadable token file, an address that cannot be bound) is one ``tallyd-ring: error: ...``
line and exit 2. A token file that others may read is a warning: the token guards every file.

ENTRY: argparse, reading the token file, and running the agent under trio.
"""

from __future__ import annotations

import argparse
import logging
import os
import stat
from functools import partial
from pathlib import Path
from typing import Any

import trio

from common.address import format_host_port, split_host_port
from common.errors import ConfigError
from common.httproutes import DEFAULT_MAX_CONNECTIONS, DEFAULT_REQUEST_TIMEOUT_SECONDS, HTTPLimits
from common.logging import configure_logging, log_event
from common.sdnotify import READY, notify
from common.signals import force_exit, run_signal_handler, run_until_stopped

from .agent import DEFAULT_LISTEN, DEFAULT_MAX_UPLOAD_BYTES, Agent, AgentConfig, serve_agent

LOGGER = logging.getLogger(__name__)

LOG_LEVELS = ("debug", "info", "warning", "error")


def add_agent_parser(commands: Any) -> None:
    """Register ``agent`` on ``commands`` (the sub-parsers of ``tallyd-ring``)."""
    agent = commands.add_parser(
        "agent",
        help="serve this Carbon host's Whisper files to tallyd-ring (list, read, merge)",
        description="The ring agent: lists, serves, merges and deletes the Whisper files of "
                    "one carbon-cache data dir over HTTP.",
    )
    # Values are checked by run_agent, so that a bad one is one error line (ConfigError).
    agent.add_argument("--data-dir", metavar="DIR",
                       help="carbon's whisper directory (LOCAL_DATA_DIR); required")
    agent.add_argument("--listen", metavar="HOST:PORT",
                       default=format_host_port(*DEFAULT_LISTEN),
                       help="address to serve on (default: %(default)s, loopback only)")
    agent.add_argument("--token-file", metavar="FILE",
                       help="file holding the cluster token; every request but GET /version "
                            "then needs 'Authorization: Bearer TOKEN'")
    agent.add_argument("--max-upload-bytes", metavar="N", default=str(DEFAULT_MAX_UPLOAD_BYTES),
                       help="largest .wsp accepted by merge and verify (default: %(default)s)")
    agent.add_argument("--request-timeout-seconds", metavar="S",
                       default=str(DEFAULT_REQUEST_TIMEOUT_SECONDS),
                       help="a request must arrive whole within this (default: %(default)s)")
    agent.add_argument("--max-connections", metavar="N", default=str(DEFAULT_MAX_CONNECTIONS),
                       help="connections served at once; more get 503 (default: %(default)s)")
    agent.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    agent.set_defaults(handler=run_agent)


def _number(text: str, flag: str, kind: type[int] | type[float]) -> Any:
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not value > 0 or value != value or value == float("inf"):
        raise ConfigError(f"{flag} must be a positive number, not {text!r}")
    return value


def read_token(path: str) -> str:
    """The token in ``path`` (surrounding whitespace stripped).

    Raises:
        ConfigError: when it cannot be read or is empty.
    """
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
        mode = os.stat(path).st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read --token-file {path}: {exc}") from None
    if not token:
        raise ConfigError(f"--token-file {path} is empty")
    if any(c.isspace() for c in token):
        raise ConfigError(f"--token-file {path}: the token must be one word")
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        log_event(LOGGER, "token_file_readable", level=logging.WARNING, path=path,
                  mode=oct(stat.S_IMODE(mode)), detail="chmod 600 it: the token guards every "
                  "file of the data dir")
    return token


def build_config(args: argparse.Namespace) -> AgentConfig:
    """The agent's settings from the flags.

    Raises:
        ConfigError: for a bad flag, a data dir that is not a directory, a bad token file.
    """
    if not args.data_dir:
        raise ConfigError("--data-dir DIR is required (carbon's whisper directory)")
    data_dir = Path(args.data_dir)
    if not data_dir.is_dir():
        raise ConfigError(f"--data-dir {args.data_dir}: not a directory")
    host, port, rest = split_host_port(args.listen, what="--listen")
    if rest:
        raise ConfigError(f"bad --listen {args.listen!r}: expected HOST:PORT")
    timeout = _number(args.request_timeout_seconds, "--request-timeout-seconds", float)
    limits = HTTPLimits(request_timeout_seconds=timeout, write_timeout_seconds=timeout,
                        max_connections=_number(args.max_connections, "--max-connections", int))
    return AgentConfig(
        data_dir=data_dir.resolve(), host=host.strip("[]"), port=port,
        token=read_token(args.token_file) if args.token_file else None,
        max_upload_bytes=_number(args.max_upload_bytes, "--max-upload-bytes", int),
        limits=limits,
    )


def ignore_reload() -> None:
    log_event(LOGGER, "reload_ignored", detail="the agent has nothing to reload")


async def run(agent: Agent) -> None:
    """Serve ``agent`` until SIGTERM or SIGINT."""
    stop = trio.Event()
    config = agent.config
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(run_signal_handler, on_stop=stop.set, on_force=force_exit,
                                    on_reload=ignore_reload))
        try:
            host, port = await nursery.start(serve_agent, agent)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {format_host_port(config.host, config.port)}:"
                              f" {exc.strerror or exc}", key="listen") from None
        log_event(LOGGER, "listening", kind="http", address=format_host_port(host, port))
        log_event(LOGGER, "started", data_dir=agent.root, token=config.token is not None,
                  max_upload_bytes=config.max_upload_bytes)
        notify(READY)  # systemd's Type=notify
        await stop.wait()
        nursery.cancel_scope.cancel()
    stats = agent.statistics()
    log_event(LOGGER, "stopped", requests=sum(stats.requests.values()),
              refused=sum(stats.refused.values()), merges=stats.merges, deleted=stats.deleted)


def run_agent(args: argparse.Namespace) -> int:
    """``tallyd-ring agent``: serve until stopped; 0 after a stop signal."""
    configure_logging(args.log_level)
    agent = Agent(build_config(args))
    return run_until_stopped(run, agent)
