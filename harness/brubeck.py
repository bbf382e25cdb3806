"""brubeck (github.com/github/brubeck, C), a second reference daemon: building and running it.

`build_brubeck` compiles a brubeck source tree (with its ``vendor/ck`` submodule checked out)
where it lies. Upstream's last commit predates OpenSSL 3, whose ``HMAC_CTX`` is opaque: the
build rewrites the one file that uses it (the statsd-secure sampler, which the benchmarks do
not run) to allocate the context with ``HMAC_CTX_new``, then runs ``make``.

`start_brubeck` runs ``brubeck --config FILE`` on 127.0.0.1 with one ``statsd`` sampler and
one plaintext ``carbon`` backend. brubeck cannot report its ports, so a free one is picked
and written into the config (retried when taken meanwhile). It is ready once it has logged
``event=listening`` and its UDP port shows in /proc/net/udp. Its semantics, as its
``src/metric.c`` and ``src/backend.c`` have them (`harness.tally.brubeck_naming` counts them):

* a ``c`` line is a "meter": the interval's sum, sent under the plain name; timers send
  ``NAME.count`` and percentiles; there are no sets;
* its flushes are not aligned to the wall clock: every ``frequency`` seconds from its start;
* the sampler's ``multimsg`` > 1 (``recvmmsg``) parses all ``multimsg`` buffers of a call,
  however many datagrams the call returned (upstream loops over the count asked, not the
  count received): with fewer datagrams queued than asked it counts stale ones again. So the
  launcher keeps ``multimsg`` at 1 (``recvfrom``), the only mode whose counts are exact.
* its receive buffer is ``SO_RCVBUF`` 32 MiB, capped by ``net.core.rmem_max``.

SHELL (subprocesses, files).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.daemon import DaemonError, DaemonProcess, start_on_fresh_ports
from harness.port import free_port, udp_port_bound

#: Worker threads of the statsd sampler (the issue's reference runs 2, one per core here).
DEFAULT_THREADS = 2
#: log2 of its metric table's size; 2**20 holds the 100k-name case with room.
CAPACITY_LOG2 = 20
#: Its ``server_name``: its own figures are named ``brubeck.bench.*``.
SERVER_NAME = "brubeck.bench"
#: How long brubeck may take to log ``event=listening``.
START_SECONDS = 15.0

_OPENSSL3_FILE = Path("src") / "samplers" / "statsd-secure.c"


class BrubeckProcess(DaemonProcess):
    """``brubeck --config FILE`` with its UDP port on 127.0.0.1."""

    name = "brubeck"

    def __init__(self, argv: list[str], *, port: int, config_dir: Path, **kwargs: Any) -> None:
        self.port = port
        self.config_dir = config_dir
        super().__init__(argv, **kwargs)

    @property
    def udp(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    def wait_ready(self, timeout: float) -> None:
        self.wait_for_log(r"event=listening", timeout)
        deadline = time.monotonic() + timeout
        while not udp_port_bound(self.port):
            if self.returncode is not None or time.monotonic() > deadline:
                raise DaemonError("brubeck did not bind its UDP port\n" + self.describe())
            time.sleep(0.05)

    def stop(self, timeout: float = 15.0) -> int:
        try:
            return super().stop(timeout)
        finally:
            shutil.rmtree(self.config_dir, ignore_errors=True)

    def kill(self) -> None:
        try:
            super().kill()
        finally:
            shutil.rmtree(self.config_dir, ignore_errors=True)


def brubeck_config(port: int, sink_port: int, flush_seconds: int,
                   threads: int) -> dict[str, Any]:
    """brubeck's config: one statsd sampler on 127.0.0.1:``port``, one carbon backend."""
    return {
        "server_name": SERVER_NAME,
        "dumpfile": "/dev/null",
        "capacity": CAPACITY_LOG2,
        "backends": [{"type": "carbon", "address": "127.0.0.1", "port": sink_port,
                      "frequency": flush_seconds}],
        "samplers": [{"type": "statsd", "address": "127.0.0.1", "port": port,
                      "workers": threads, "multimsg": 1, "multisock": False}],
    }


def start_brubeck(binary: Path, sink_port: int, flush_seconds: float, *,
                  threads: int = DEFAULT_THREADS, attempts: int = 3) -> BrubeckProcess:
    """Run brubeck flushing to 127.0.0.1:``sink_port`` every ``flush_seconds`` (whole
    seconds: its config takes an integer, so a fraction is rounded up)."""
    if not os.access(binary, os.X_OK):
        raise DaemonError(f"brubeck binary {binary} is not executable")
    seconds = max(1, int(-(-flush_seconds // 1)))
    def launch() -> BrubeckProcess:
        port = free_port("udp")
        config_dir = Path(tempfile.mkdtemp(prefix="brubeck-"))
        path = config_dir / "config.json"
        path.write_text(json.dumps(brubeck_config(port, sink_port, seconds, threads)))
        return BrubeckProcess([str(binary), "--config", str(path)], port=port,
                              config_dir=config_dir)

    return start_on_fresh_ports(launch, lambda proc: proc.wait_ready(START_SECONDS),
                                attempts=attempts, port_taken="failed to bind")


def build_brubeck(source: Path) -> Path:
    """Build brubeck in ``source`` (a checkout with ``vendor/ck``); return the binary.

    Raises:
        DaemonError: the tree is incomplete or ``make`` failed (with its output's tail).
    """
    if not (source / "vendor" / "ck" / "configure").is_file():
        raise DaemonError(f"{source}/vendor/ck is empty: check out brubeck's submodule "
                          "(concurrencykit/ck)")
    secure = source / _OPENSSL3_FILE
    text = secure.read_text()
    if "HMAC_CTX ctx;" in text:  # OpenSSL 3: HMAC_CTX is opaque
        text = (text.replace("HMAC_CTX ctx;", "HMAC_CTX *ctx = HMAC_CTX_new();")
                .replace("HMAC_CTX_init(&ctx);\n", "")
                .replace("HMAC_CTX_cleanup(&ctx);", "HMAC_CTX_free(ctx);")
                .replace("(&ctx,", "(ctx,"))
        secure.write_text(text)
    # upstream's Makefile asks git for its version; a tarball has no .git
    result = subprocess.run(["make", "-C", str(source), "-j2", "GIT_SHA=unknown"],
                            capture_output=True, text=True)
    binary = source / "brubeck"
    if result.returncode != 0 or not binary.is_file():
        raise DaemonError("brubeck did not build:\n" + (result.stdout + result.stderr)[-3000:])
    return binary
