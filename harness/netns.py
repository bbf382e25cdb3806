"""Hosts as Linux network namespaces: a private LAN for tests of tallyd across machines.

A `Network` is a switch and the hosts plugged into it:

* the switch is a bridge inside a namespace of its own, so nothing is added to the machine's
  own network namespace: no address, no link, no firewall rule, no bridge netfilter setting
  (Docker's FORWARD policy and ``br_netfilter`` of the host never see these packets);
* each host is a namespace with its loopback up and one veth (``eth0`` inside, ``v-<host>`` on
  the switch side, both made in place, never in the machine's namespace) holding one IPv4
  address of the network, and ``/etc/netns/<namespace>/resolv.conf`` naming the network's DNS
  server: ``ip netns exec`` bind-mounts the files of that folder over ``/etc``, so a program
  run there resolves names with the network's DNS server and nothing else.

Programs run in a host with `Network.argv` (``ip netns exec NS [unshare --uts ...] PROGRAM``:
every step execs, so the pid started is the program's and it is stopped by that pid). In this
process, `Network.entered` switches the calling thread into a host (setns(2)) for as long as
a socket is made: a socket lives in the namespace it was made in, so a listener or an HTTP
request made there belongs to that host afterwards too.

`Network.close` removes every namespace (their veths go with them), every /etc/netns folder
and, if this network made it, the /run/netns mount that ``ip netns`` sets up; the processes
run in the hosts must be stopped first (the caller owns them). Namespaces are named
``tdhosts<pid>-<host>``; a new `Network` first removes (`remove_stale`) those of processes
that are gone (a test killed before its cleanup), and only those.

SHELL (ip, namespaces).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

#: Where ``ip netns`` keeps the namespaces' handles and where it looks for per-namespace /etc
#: files.
RUN_NETNS = Path("/run/netns")
ETC_NETNS = Path("/etc/netns")
#: The namespaces' name prefix; the pid that follows says whose they are.
PREFIX = "tdhosts"
_NAME = re.compile(rf"^{PREFIX}(\d+)-")
#: setns(2)'s flag for a network namespace.
CLONE_NEWNET = 0x40000000
#: How long what is left in a namespace being removed gets between SIGTERM and SIGKILL.
STOP_SECONDS = 5.0
#: Linux's limit on interface names (IFNAMSIZ - 1).
MAX_LINK_NAME = 15


class NetnsError(RuntimeError):
    """An ``ip`` command failed, or a host is unknown."""


def ip(*args: str) -> str:
    """Run ``ip ARGS``; its standard output.

    Raises:
        NetnsError: it exited non-zero (the message has its stderr).
    """
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


def _owner_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: a killed test's may wait long to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _namespaces() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def _pids(namespace: str) -> list[int]:
    with contextlib.suppress(NetnsError):
        return [int(pid) for pid in ip("netns", "pids", namespace).split()]
    return []


def _signal(pids: Sequence[int], signum: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _remove_namespace(namespace: str) -> None:
    """Stop what still runs in ``namespace`` (by pid: SIGTERM, so an aggregator removes its
    workers' runtime folder, then SIGKILL after STOP_SECONDS), delete it and its /etc/netns
    folder."""
    pids = _pids(namespace)
    if pids:
        _signal(pids, signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        while any(_owner_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        _signal(_pids(namespace), signal.SIGKILL)
    with contextlib.suppress(NetnsError):
        ip("netns", "delete", namespace)
    shutil.rmtree(ETC_NETNS / namespace, ignore_errors=True)


def remove_stale() -> list[str]:
    """Remove the namespaces of this module whose owner process is gone; their names. With
    any removed, /etc/netns and the /run/netns mount go too if nothing else is left in them
    (the killed owner made them, most likely)."""
    stale = [ns for ns in _namespaces()
             if (m := _NAME.match(ns)) and not _owner_alive(int(m[1]))]
    for namespace in stale:
        _remove_namespace(namespace)
    if stale:
        _remove_empty_folders(etc=True, run=True)
    return stale


def _remove_empty_folders(*, etc: bool, run: bool) -> None:
    if etc:
        with contextlib.suppress(OSError):
            ETC_NETNS.rmdir()  # only if empty: another user's folders stay
    if run and RUN_NETNS.exists() and not any(RUN_NETNS.iterdir()):
        subprocess.run(["umount", str(RUN_NETNS)], capture_output=True, timeout=30)
        with contextlib.suppress(OSError):
            RUN_NETNS.rmdir()


class Network:
    """A switch in its own namespace and hosts on ``prefix``.0/24 (e.g. ``10.213.0``).

    Args:
        prefix: the first three octets of the network's addresses.
        dns: the last octet of the DNS server's address, written into every host's
            resolv.conf (the caller runs the server, in a host of that address).
    """

    def __init__(self, prefix: str, *, dns: int) -> None:
        self.prefix = prefix
        self.dns_address = f"{prefix}.{dns}"
        remove_stale()
        self.tag = f"{PREFIX}{os.getpid()}"
        self.hosts: dict[str, str] = {}  # host -> its address
        self._made_run_netns = not RUN_NETNS.exists()
        self._made_etc_netns = not ETC_NETNS.exists()
        self._namespaces: list[str] = []
        try:
            self.switch = self._add_namespace("switch")
            ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            ip("-n", self.switch, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise

    def namespace(self, host: str) -> str:
        if host not in self.hosts:
            raise NetnsError(f"no host {host!r}; have {sorted(self.hosts)}")
        return f"{self.tag}-{host}"

    def _add_namespace(self, name: str) -> str:
        namespace = f"{self.tag}-{name}"
        self._namespaces.append(namespace)  # before it exists: close() removes a half-made one
        ip("netns", "add", namespace)
        ip("-n", namespace, "link", "set", "lo", "up")
        return namespace

    def add_host(self, host: str, last_octet: int) -> str:
        """A new host with address PREFIX.last_octet; its address."""
        peer = f"v-{host}"
        if len(peer) > MAX_LINK_NAME:
            raise NetnsError(f"host name {host!r} too long for a link name ({peer!r})")
        namespace = self._add_namespace(host)
        address = f"{self.prefix}.{last_octet}"
        ip("link", "add", "eth0", "netns", namespace, "type", "veth",
           "peer", "name", peer, "netns", self.switch)
        ip("-n", self.switch, "link", "set", peer, "master", "br0", "up")
        ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", namespace, "link", "set", "eth0", "up")
        etc = ETC_NETNS / namespace
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(f"nameserver {self.dns_address}\n"
                                         "options timeout:1 attempts:2\n")
        self.hosts[host] = address
        return address

    def argv(self, host: str, program: Sequence[str], *, hostname: bool = True) -> list[str]:
        """``program`` run in ``host``; with ``hostname``, in a UTS namespace of its own whose
        host name is ``host`` (as a daemon on that machine would see it)."""
        command = ["ip", "netns", "exec", self.namespace(host)]
        if hostname:
            command += ["unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"',
                        host]
        return [*command, *program]

    def run(self, host: str, program: Sequence[str], *, timeout: float = 30.0
            ) -> subprocess.CompletedProcess[str]:
        """Run ``program`` in ``host`` to its end (output captured, status not checked)."""
        return subprocess.run(self.argv(host, program, hostname=False), capture_output=True,
                              text=True, timeout=timeout)

    @contextlib.contextmanager
    def entered(self, host: str) -> Iterator[None]:
        """Run the block with the calling thread in ``host``'s network namespace."""
        with open("/proc/thread-self/ns/net", "rb") as own, \
                open(RUN_NETNS / self.namespace(host), "rb") as target:
            _setns(target.fileno())
            try:
                yield
            finally:
                _setns(own.fileno())

    def close(self) -> None:
        """Remove every namespace, link and /etc/netns folder of this network."""
        for namespace in reversed(self._namespaces):
            _remove_namespace(namespace)
        self._namespaces.clear()
        _remove_empty_folders(etc=self._made_etc_netns, run=self._made_run_netns)

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
