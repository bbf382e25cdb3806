"""A private Docker engine for the compose test, and the local base image it builds from.

No container registry is reachable from the test machines, so nothing is pulled: the base is a
Debian bookworm made with ``debootstrap`` from the mirror apt already uses, imported with
``docker import`` (its tarball is kept in ``.cache/docker-base/`` so a second run skips the
minute debootstrap takes). The engine is Debian's ``dockerd`` with every piece of state in one
temporary folder (data root, exec root, pidfile, socket), so it cannot collide with another
engine on the host.

dockerd changes the host behind our back: it turns on ``ip_forward``, rewrites the iptables
``filter`` and ``nat`` tables (the FORWARD policy becomes DROP), makes the ``docker0`` bridge and
leaves all three behind when it stops, and its containers leave mounts under the data root.
`PrivateDockerd` records the first three before it starts the engine and puts them back in
:meth:`PrivateDockerd.stop`, which stops the engine by the pid in its own pidfile (never by name),
unmounts whatever is still mounted under its folder and removes the folder. ``stop`` runs every
step even when an earlier one fails, and is safe to call twice.

SHELL (subprocesses, files, the host's network settings).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from harness.checkout import CACHE_DIR

#: The base image the tests build ``deploy/Dockerfile`` and ``deploy/carbon/Dockerfile`` from.
BASE_IMAGE = "local/debian:bookworm"
#: Debian packages in the base: what ``ARG BASE`` must provide (Python 3.11 with venv) and the
#: CA store (a network that intercepts TLS needs the host's extra CA files for PyPI).
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
BASE_TARBALL = CACHE_DIR / "docker-base" / "bookworm-minbase-python3.tar"
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
TOOLS = ("dockerd", "docker", "docker-compose", "debootstrap", "iptables-save", "iptables-restore")


class EngineError(RuntimeError):
    """The engine did not start, or a docker command failed (with its output)."""


def missing_tools() -> list[str]:
    """Programs this module needs that are not on PATH (tools/bootstrap --test installs them)."""
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def debian_mirror() -> str:
    """The Debian mirror apt uses on this host (deb822 or one-line sources), else deb.debian.org."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                words = line.split()
                if words[:1] == ["URIs:"] and len(words) > 1 and not words[1].endswith("-security"):
                    return words[1]
                if words[:1] == ["deb"]:
                    urls = [w for w in words[1:] if "://" in w]
                    if urls and not urls[0].rstrip("/").endswith("-security"):
                        return urls[0]
    return "http://deb.debian.org/debian"


def mounts_under(folder: Path) -> list[str]:
    """Mount points at or below ``folder``, deepest first (from /proc/self/mountinfo)."""
    prefix = str(folder)
    points = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                points.append(point)
    return sorted(points, key=len, reverse=True)


def unmount_all(folder: Path) -> None:
    for point in mounts_under(folder):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def base_tarball() -> Path:
    """The base image's root file system as a tarball, made once with debootstrap (cached).

    The host's apt sources go in (apt in an image uses the same mirror), and so do the host's
    extra CA files (``/usr/local/share/ca-certificates``), made trusted inside the base.
    """
    if BASE_TARBALL.exists():
        return BASE_TARBALL
    BASE_TARBALL.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="debootstrap-", dir=BASE_TARBALL.parent))
    rootfs = work / "rootfs"
    try:
        _run(["debootstrap", "--variant=minbase", "--include=" + ",".join(BASE_PACKAGES),
              "bookworm", str(rootfs), debian_mirror()], timeout=900)
        apt = rootfs / "etc" / "apt"
        for name in ("sources.list",):
            if Path("/etc/apt", name).exists():
                shutil.copy2(Path("/etc/apt", name), apt / name)
        for source in sorted(Path("/etc/apt/sources.list.d").glob("*")):
            if source.is_file():
                shutil.copy2(source, apt / "sources.list.d" / source.name)
        cas = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
        for ca in cas:
            shutil.copy2(ca, rootfs / "usr" / "local" / "share" / "ca-certificates" / ca.name)
        if cas:
            _run(["chroot", str(rootfs), "update-ca-certificates"], timeout=120)
        (rootfs / "var" / "cache" / "apt" / "archives").mkdir(parents=True, exist_ok=True)
        for deb in (rootfs / "var" / "cache" / "apt" / "archives").glob("*.deb"):
            deb.unlink()
        partial = work / "base.tar"  # beside it: a rename is atomic, and a run's own file
        with partial.open("wb") as out:
            subprocess.run(["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."],
                           stdout=out, check=True, timeout=300)
        partial.replace(BASE_TARBALL)
    finally:
        unmount_all(work)
        shutil.rmtree(work, ignore_errors=True)
    return BASE_TARBALL


def _run(argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None,
         cwd: Path | None = None, input_file: Path | None = None) -> str:
    with contextlib.ExitStack() as stack:
        stdin = stack.enter_context(input_file.open("rb")) if input_file else subprocess.DEVNULL
        result = subprocess.run(list(argv), stdin=stdin, capture_output=True, text=True,
                                timeout=timeout, env=dict(env) if env is not None else None,
                                cwd=cwd, check=False)
    if result.returncode != 0:
        raise EngineError(f"{' '.join(argv)} exited {result.returncode}:\n"
                          f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result.stdout


def _default_mtu() -> int:
    """The MTU of the default route's interface (containers must not send larger packets)."""
    for line in Path("/proc/net/route").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == "00000000":
            with contextlib.suppress(OSError, ValueError):
                return int(Path(f"/sys/class/net/{fields[0]}/mtu").read_text())
    return 1500


class PrivateDockerd:
    """Debian's dockerd with its state in a folder of its own; see the module docstring."""

    def __init__(self, folder: Path | None = None) -> None:
        # containerd's sockets go under the exec root, and a Unix socket path is at most 104
        # bytes: a short folder in /tmp by default (pytest's tmp_path can be too long).
        if folder is None:
            folder = Path(tempfile.mkdtemp(prefix="tallyd-dockerd-", dir="/tmp"))
        self.folder = Path(folder).resolve()
        self.socket = self.folder / "docker.sock"
        self.pidfile = self.folder / "docker.pid"
        self.log = self.folder / "dockerd.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._iptables: str | None = None
        self._nft_tables: set[str] | None = None
        self._ip_forward: str | None = None
        self._had_docker0 = True

    @property
    def env(self) -> dict[str, str]:
        """The environment for docker and docker-compose talking to this engine."""
        return {**os.environ, "DOCKER_HOST": f"unix://{self.socket}",
                "DOCKER_CONFIG": str(self.folder / "client")}

    def start(self, timeout: float = 60.0) -> PrivateDockerd:
        self._iptables = _run(["iptables-save"], timeout=30)
        self._nft_tables = _nft_tables()
        self._ip_forward = IP_FORWARD.read_text()
        self._had_docker0 = Path("/sys/class/net/docker0").exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "client").mkdir(exist_ok=True)
        with self.log.open("wb") as log:
            self._process = subprocess.Popen(
                ["dockerd", "--data-root", str(self.folder / "data"),
                 "--exec-root", str(self.folder / "exec"), "--pidfile", str(self.pidfile),
                 "-H", f"unix://{self.socket}", "--storage-driver", "overlay2",
                 "--mtu", str(_default_mtu())],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise EngineError(f"dockerd exited {self._process.returncode}:\n{self.log_tail()}")
            probe = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                                   env=self.env, capture_output=True, check=False, timeout=30)
            if probe.returncode == 0:
                return self
            if time.monotonic() > deadline:
                raise EngineError(f"dockerd did not answer within {timeout} s:\n{self.log_tail()}")
            time.sleep(0.3)

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def docker(self, *args: str, timeout: float = 600.0, cwd: Path | None = None,
               input_file: Path | None = None) -> str:
        return _run(["docker", *args], timeout=timeout, env=self.env, cwd=cwd,
                    input_file=input_file)

    def compose(self, project_dir: Path, *args: str, timeout: float = 900.0) -> str:
        return _run(["docker-compose", *args], timeout=timeout, cwd=project_dir,
                    env={**self.env, "COMPOSE_PROJECT_NAME": "tallydtest"})

    def import_base(self) -> None:
        """``docker import`` the cached base tarball (made first if missing) as BASE_IMAGE."""
        self.docker("import", "-c", 'CMD ["bash"]',
                    "-c", "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
                    "-", BASE_IMAGE, input_file=base_tarball())

    def _stop_engine(self) -> None:
        pid = None
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.pidfile.read_text().strip())
        if pid is None and self._process is not None and self._process.poll() is None:
            pid = self._process.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while pid_alive(pid) and time.monotonic() < deadline:
                if self._process is not None and self._process.pid == pid:
                    self._process.poll()
                time.sleep(0.1)
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self._process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=10)

    def stop(self) -> None:
        """Stop the engine and put the host back as :meth:`start` found it (every step runs)."""
        errors: list[BaseException] = []
        for step in (self._stop_engine, lambda: unmount_all(self.folder), self._restore_network,
                     lambda: shutil.rmtree(self.folder, ignore_errors=True)):
            try:
                step()
            except Exception as error:  # every step must run; raised below
                errors.append(error)
        self._process = None
        if errors:
            raise EngineError(f"cleanup failed: {errors!r}")

    def _restore_network(self) -> None:
        if not self._had_docker0 and Path("/sys/class/net/docker0").exists():
            subprocess.run(["ip", "link", "delete", "docker0"], capture_output=True, check=False)
        if self._iptables is not None:
            saved = {line[1:] for line in self._iptables.splitlines() if line.startswith("*")}
            for table in ("filter", "nat"):
                if table not in saved:  # absent before: empty it (iptables-restore won't)
                    subprocess.run(["iptables", "-t", table, "-F"], capture_output=True)
                    subprocess.run(["iptables", "-t", table, "-X"], capture_output=True)
                    if table == "filter":
                        for chain in ("INPUT", "FORWARD", "OUTPUT"):
                            subprocess.run(["iptables", "-P", chain, "ACCEPT"],
                                           capture_output=True)
            subprocess.run(["iptables-restore"], input=self._iptables, text=True,
                           capture_output=True, check=True, timeout=30)
        if self._nft_tables is not None:
            # iptables over nf_tables cannot drop a table; nft can: those dockerd made go.
            for table in (_nft_tables() or set()) - self._nft_tables:
                family, name = table.split()
                if family in ("ip", "ip6") and name in ("filter", "nat"):
                    subprocess.run(["nft", "delete", "table", family, name],
                                   capture_output=True, check=False, timeout=30)
        if self._ip_forward is not None:
            IP_FORWARD.write_text(self._ip_forward)

    def __enter__(self) -> PrivateDockerd:
        try:
            return self.start()
        except BaseException:
            self.stop()  # a start that failed halfway has changed the host too
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


def _nft_tables() -> set[str] | None:
    """``FAMILY NAME`` of every nf_tables table, or None without the nft command."""
    if shutil.which("nft") is None:
        return None
    listing = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True,
                             check=False, timeout=30).stdout
    return {line.removeprefix("table ").strip() for line in listing.splitlines()
            if line.startswith("table ")}


def iptables_rules() -> list[str]:
    """``iptables-save`` without comments and counters, and without tables that hold nothing
    (only built-in chains with policy ACCEPT): such a table filters nothing, and over nf_tables
    iptables cannot remove it."""
    kept: list[str] = []
    table: list[str] = []
    for line in _run(["iptables-save"], timeout=30).splitlines():
        if not line or line.startswith("#"):
            continue
        line = line.split(" [")[0] if line.startswith(":") else line
        table.append(line)
        if line == "COMMIT":
            if any(not (x.startswith(("*", ":")) or x == "COMMIT") or
                   (x.startswith(":") and not x.endswith(" ACCEPT")) for x in table):
                kept.extend(table)
            table = []
    return kept


def host_state() -> dict[str, object]:
    """What dockerd changes on the host, for a test to compare before and after."""
    return {"ip_forward": IP_FORWARD.read_text().strip(),
            "docker0": Path("/sys/class/net/docker0").exists(),
            "iptables": iptables_rules()}
