"""Debian's dnsmasq as the DNS server of a test network: one zone, from a hosts file.

`Dnsmasq` serves the names of a hosts file (several lines for one name: several A records,
which dnsmasq rotates from one answer to the next, as round-robin DNS) on one address, and
nothing else: no upstream servers (``--no-resolv``), the zone answered locally
(``--local=/ZONE/``: a name it does not know is NXDOMAIN, never forwarded), no DHCP, no
``/etc/hosts``. `Dnsmasq.set_records` rewrites the file and sends SIGHUP, on which dnsmasq
reads it again and forgets its cache: the way an operator's zone change is published.

It runs in the foreground (``--keep-in-foreground``), logging to stderr, started by the
caller's argv prefix (`harness.netns.Network.argv`) and stopped by its pid. It keeps root
(``--user=root``) so that after SIGHUP it can read a hosts file in a test's private folder.

SHELL (subprocesses).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

from harness.daemon import DaemonProcess

#: The TTL of the answers, in seconds: as short as a zone for moving hosts should have it
#: (docs/dns.md); glibc does not cache, so the proxies' look-ups see a change at once anyway.
TTL_SECONDS = 1


def dnsmasq_available() -> bool:
    return shutil.which("dnsmasq") is not None


def format_hosts(records: Mapping[str, Sequence[str]]) -> str:
    """A hosts file with one line per (address, name)."""
    return "".join(f"{address} {name}\n" for name, addresses in records.items()
                   for address in addresses)


class Dnsmasq(DaemonProcess):
    """dnsmasq answering for ``zone`` from ``hosts_file`` on ``address`` port 53.

    Args:
        prefix: what to run dnsmasq under (e.g. ``ip netns exec NS``), as an argv.
    """

    name = "dnsmasq"

    def __init__(self, *, prefix: Sequence[str], address: str, zone: str, hosts_file: Path,
                 records: Mapping[str, Sequence[str]]) -> None:
        self.hosts_file = hosts_file
        hosts_file.write_text(format_hosts(records))
        super().__init__([
            *prefix, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
            "--log-facility=-", "--log-queries", "--user=root", "--pid-file=",
            "--no-resolv", "--no-hosts", f"--addn-hosts={hosts_file}",
            f"--local=/{zone}/", "--domain-needed", "--bogus-priv",
            f"--listen-address={address}", "--bind-interfaces", "--except-interface=lo",
            f"--local-ttl={TTL_SECONDS}", "--cache-size=0",
        ])

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Until dnsmasq says it read the hosts file (it serves from then on)."""
        self.wait_for_log(rf"read {self.hosts_file} - \d+ names", timeout)

    def set_records(self, records: Mapping[str, Sequence[str]]) -> None:
        """Publish new records: rewrite the hosts file, SIGHUP."""
        self.hosts_file.write_text(format_hosts(records))
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGHUP)


def lookup_command(name: str) -> list[str]:
    """A command printing the IPv4 addresses ``name`` resolves to through the C library
    (getent ahostsv4: the same getaddrinfo a daemon calls)."""
    return ["getent", "ahostsv4", name]


def parse_getent(output: str) -> list[str]:
    """The addresses of ``getent ahostsv4`` output, in its order, each once."""
    seen: list[str] = []
    for line in output.splitlines():
        fields = line.split()
        if fields and fields[0] not in seen:
            seen.append(fields[0])
    return seen

