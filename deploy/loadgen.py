#!/usr/bin/env python3
"""tallyd-loadgen: StatsD counters over UDP to every address a name resolves to, in turn.

    tallyd-loadgen [--target HOST:PORT] [--names N] [--prefix P] [--rate R] [--count C]

Sends ``P.cI:1|c`` for I = 0..N-1 in turn, R lines a second, one line per datagram, and cycles
the datagrams over every IPv4 address HOST has (Docker's DNS answers a service name with all its
replicas: a client that resolved once would send everything to one). The addresses are looked up
again every 10 s. Without --count it runs until stopped; with --count C it sends C lines, then
prints one JSON object (``sent``, ``names``: lines per name, ``addresses``: lines per address)
and exits. Standard library only. The compose file's ``loadgen`` service runs it.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import time

RESOLVE_EVERY = 10.0


def resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_DGRAM)
    seen: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in seen:
            seen.append(address)
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tallyd-loadgen", description=__doc__.split("\n")[1])
    parser.add_argument("--target", default="proxy:8125", help="HOST:PORT (default proxy:8125)")
    parser.add_argument("--names", type=int, default=100, help="distinct counters (default 100)")
    parser.add_argument("--prefix", default="loadgen", help="first name component")
    parser.add_argument("--rate", type=float, default=1000.0, help="lines a second (default 1000)")
    parser.add_argument("--count", type=int, default=0, help="lines to send; 0: until stopped")
    args = parser.parse_args(argv)
    host, _, port_text = args.target.rpartition(":")
    port = int(port_text)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    addresses = resolve(host, port)
    resolved_at = time.monotonic()
    per_name = [0] * args.names
    per_address: dict[str, int] = {}
    start = time.monotonic()
    sent = 0
    while args.count == 0 or sent < args.count:
        if time.monotonic() - resolved_at > RESOLVE_EVERY:
            addresses = resolve(host, port) or addresses
            resolved_at = time.monotonic()
        index = sent % args.names
        address = addresses[sent % len(addresses)]
        sock.sendto(f"{args.prefix}.c{index}:1|c".encode(), (address, port))
        per_name[index] += 1
        per_address[address] = per_address.get(address, 0) + 1
        sent += 1
        if args.rate > 0:
            delay = start + sent / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    print(json.dumps({"sent": sent, "names": {f"{args.prefix}.c{i}": n
                                               for i, n in enumerate(per_name)},
                      "addresses": per_address}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
