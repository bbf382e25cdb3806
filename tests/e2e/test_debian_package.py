"""deploy/debian/: the package built with Debian's tools and installed into a throwaway root.

The package is built as a Debian developer builds one: the source tree (as the checkout has
it, without .git, .venv, .cache) with deploy/debian as its debian/, then
``dpkg-buildpackage -b`` (debhelper's ``dh``; tools/bootstrap --test installs debhelper).

The throwaway root is this machine's own Debian system seen through an overlay: a private
mount namespace (``unshare --mount``, held open by a process of ours) where the host's ``/``
is the lower layer of an overlayfs whose upper layer is a tmpfs, with its own /tmp and /run.
Real ``dpkg -i`` runs there chrooted, maintainer scripts and conffiles included, against the
host's real package database; every write lands in the tmpfs, so the host never changes, and
the mounts go with the namespace when its holder exits (at teardown, or when pytest dies:
it waits on a pipe from us). Python's own packages come from the host (``python3.11``, the
package's only dependency); every Python library tallyd uses comes from the package's
virtualenv (/usr/lib/tallyd), which sees none of the host's.

In that root each role's command runs ``--version`` and ``--check-config`` on the example
configs the package ships in /etc/tallyd, ``systemd-analyze verify`` and ``security`` check
every unit as installed, each unit's own ExecStart line serves there (READY=1, /healthz; in a
network namespace of its own, so the shipped fixed ports clash with nothing), and
``dpkg --purge`` removes it all.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
#: Not copied into the source tree the package is built from.
NOT_SOURCE = (".git", ".venv", ".cache", "*.egg-info", "__pycache__", ".pytest_cache",
              ".mypy_cache", ".ruff_cache", "build", "dist")
COMMANDS = {"tallyd-proxy": "proxy.toml", "tallyd-aggregator": "aggregator-main.toml"}


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        message = f"missing {', '.join(missing)}: tools/bootstrap --test installs them"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The .deb, built by dpkg-buildpackage from a copy of the source."""
    need("dpkg-buildpackage", "dh")
    build = tmp_path_factory.mktemp("debbuild")
    source = build / f"tallyd-{VERSION}"
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    shutil.copytree(DEPLOY / "debian", source / "debian")
    result = subprocess.run(["dpkg-buildpackage", "-b", "-us", "-uc"], cwd=source,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return build / f"tallyd_{VERSION}_all.deb"


class Root:
    """A throwaway root (module docstring): commands run in it with `run`."""

    def __init__(self, base: Path) -> None:
        self.path = base / "root"  # the mount point (empty outside the namespace)
        self.path.mkdir()
        layers = base / "layers"
        layers.mkdir()
        script = f"""set -e
mount --make-rprivate /
mount -t tmpfs -o mode=0755 tallyd-test {layers}
mkdir {layers}/upper {layers}/work
mount -t overlay overlay -o lowerdir=/,upperdir={layers}/upper,workdir={layers}/work {self.path}
mount -t tmpfs -o mode=1777 tallyd-tmp {self.path}/tmp
mount -t tmpfs -o mode=0755 tallyd-run {self.path}/run
mount --rbind /dev {self.path}/dev
mount -t proc proc {self.path}/proc
echo ready
read _
"""
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.holder.stdout is not None
        line = self.holder.stdout.readline()
        if line != "ready\n":
            self.close()
            raise AssertionError(f"no throwaway root: {line!r} {self.holder.stderr}")
        #: The root's files as the namespace sees them (outside it, `path` is an empty dir).
        self.files = Path(f"/proc/{self.holder.pid}/root") / self.path.relative_to("/")

    def run(self, *argv: str, check: bool = True, timeout: float = 120,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """``argv`` chrooted in the root (PATH as Debian's root has it)."""
        environ = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                   "HOME": "/root", **(env or {})}
        result = subprocess.run(
            ["nsenter", f"--target={self.holder.pid}", "--mount", "chroot", str(self.path),
             *argv], env=environ, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=timeout)
        if check:
            assert result.returncode == 0, (argv, result.stdout, result.stderr)
        return result

    def close(self) -> None:
        if self.holder.poll() is None:
            assert self.holder.stdin is not None
            self.holder.stdin.close()  # `read` ends: the namespace and its mounts go
            try:
                self.holder.wait(10)
            except subprocess.TimeoutExpired:
                self.holder.kill()
                self.holder.wait(10)
        for stream in (self.holder.stdout, self.holder.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture(scope="module")
def root(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Root]:
    """A throwaway root with the package installed by dpkg -i."""
    if os.geteuid() != 0:
        pytest.skip("a throwaway root needs root (mount namespaces, overlayfs, chroot)")
    need("unshare", "nsenter", "chroot", "dpkg")
    base = tmp_path_factory.mktemp("throwaway")
    throwaway = Root(base)
    try:
        shutil.copy(deb, throwaway.files / "tmp" / deb.name)
        throwaway.run("dpkg", "-i", f"/tmp/{deb.name}")
        yield throwaway
    finally:
        throwaway.close()


def test_package_names_its_version_dependency_and_conffiles(deb: Path) -> None:
    def field(name: str) -> str:
        return subprocess.run(["dpkg-deb", "--field", str(deb), name], check=True,
                              capture_output=True, text=True).stdout.strip()

    assert field("Version") == VERSION  # debian/changelog follows pyproject.toml
    assert field("Depends") == "python3.11"
    assert field("Architecture") == "all"
    control = subprocess.run(["dpkg-deb", "--info", str(deb), "conffiles"], check=True,
                             capture_output=True, text=True).stdout.split()
    assert sorted(control) == ["/etc/tallyd/aggregator-main.toml", "/etc/tallyd/proxy.toml"]


def test_installed_package_is_registered_and_host_untouched(root: Root) -> None:
    status = root.run("dpkg-query", "-W", "-f", "${Status} ${Version}", "tallyd").stdout
    assert status == f"install ok installed {VERSION}"
    assert not Path("/usr/lib/tallyd").exists()  # only the throwaway root has it
    assert (root.files / "usr/lib/tallyd/pyvenv.cfg").exists()


@pytest.mark.parametrize("command", ["tallyd-proxy", "tallyd-aggregator", "tallyd-ring"])
def test_each_command_prints_its_version(root: Root, command: str) -> None:
    result = root.run(command, "--version")
    assert result.stdout.strip() == f"{command} {VERSION}"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_role_checks_its_shipped_config(root: Root, command: str) -> None:
    config = f"/etc/tallyd/{COMMANDS[command]}"
    result = root.run(command, "--config", config, "--check-config")
    assert "configuration ok" in result.stderr
    shipped = (DEPLOY / "config" / COMMANDS[command].replace("-main", "")).read_text()
    assert (root.files / config.lstrip("/")).read_text() == shipped
    # A broken config is refused with exit 2, as a unit's RestartPreventExitStatus=2 expects.
    bad = root.run(command, "--config", config, "--no-such-setting", "1", "--check-config",
                   check=False)
    assert bad.returncode == 2


def test_ring_tool_reads_the_shipped_aggregator_config(root: Root) -> None:
    result = root.run("tallyd-ring", "lookup", "--config", "/etc/tallyd/aggregator-main.toml",
                      "stats.counters.api.requests.count")
    path, nodes = result.stdout.strip().split("\t")
    assert path == "stats.counters.api.requests.count"
    assert nodes in ("carbon-1.tallyd.example:2003:a", "carbon-2.tallyd.example:2003:b")


def test_bundled_libraries_come_from_the_package(root: Root) -> None:
    script = ("import trio, attrs, h11, uhashring, sys; "
              "print(sys.prefix, trio.__file__, attrs.__file__, h11.__file__, "
              "uhashring.__file__, sep='\\n')")
    lines = root.run("/usr/lib/tallyd/bin/python3", "-c", script).stdout.split()
    assert lines[0] == "/usr/lib/tallyd"
    assert all(line.startswith("/usr/lib/tallyd/lib/python3.11/site-packages/")
               for line in lines[1:]), lines
    for name in ("tallyd-proxy", "tallyd-aggregator", "tallyd-ring"):
        first = (root.files / "usr/lib/tallyd/bin" / name).read_text().splitlines()[0]
        assert first == "#!/usr/lib/tallyd/bin/python3.11"
    assert "debian/tallyd" not in (root.files / "usr/lib/tallyd/pyvenv.cfg").read_text()


def test_units_as_installed_pass_systemd_analyze_verify(root: Root) -> None:
    shipped = sorted(p.name for p in (DEPLOY / "systemd").glob("*.service"))
    installed = sorted(p.name for p in (root.files / "lib/systemd/system").glob("tallyd*"))
    assert installed == shipped
    for name in shipped:
        assert (root.files / "lib/systemd/system" / name).read_text() == \
            (DEPLOY / "systemd" / name).read_text()
    # The ring agent runs as carbon's user; the root has no graphite-carbon, so make it.
    root.run("useradd", "--system", "--no-create-home", "_graphite")
    result = root.run("systemd-analyze", "verify", "--man=no",
                      *[f"/lib/systemd/system/{name}" for name in shipped], check=False)
    # verify exits 0 with warnings (an unknown key, a bad value): any output fails too.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_units_expose_little_by_systemd_analyze_security(root: Root) -> None:
    for name in sorted(p.name for p in (DEPLOY / "systemd").glob("*.service")):
        result = root.run("systemd-analyze", "security", "--offline=yes", "--no-pager",
                          "--threshold=20", f"/lib/systemd/system/{name}", check=False)
        # 20 is an exposure of 2.0 on systemd's 0-10 scale ("OK" is under 5).
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr


def test_units_are_hardened_with_notify_readiness() -> None:
    for unit in sorted((DEPLOY / "systemd").glob("*.service")):
        lines = {line.strip() for line in unit.read_text().splitlines()}
        for wanted in ("Type=notify", "ProtectSystem=strict", "NoNewPrivileges=yes",
                       "Restart=on-failure", "RestartPreventExitStatus=2"):
            assert wanted in lines, (unit.name, wanted)
        assert "DynamicUser=yes" in lines or "User=_graphite" in lines, unit.name
    aggregator = (DEPLOY / "systemd" / "tallyd-aggregator@.service").read_text()
    assert "StateDirectory=tallyd/aggregator-%i" in aggregator
    spool = tomllib.loads((DEPLOY / "config" / "aggregator.toml").read_text())
    assert spool["carbon_spool_dir"].startswith("/var/lib/tallyd/aggregator-main/")


#: What each unit's ExecStart needs in the root that systemd would otherwise provide.
UNIT_SETUP = {
    # StateDirectory=tallyd/aggregator-%i
    "tallyd-aggregator@.service": "mkdir -p /var/lib/tallyd/aggregator-main",
    "tallyd-proxy.service": "true",
    # carbon's data dir (graphite-carbon's), and LoadCredential=token:...
    "tallyd-ring-agent.service": "mkdir -p /var/lib/graphite/whisper /tmp/credentials"
                                 " && echo test-token > /tmp/credentials/token"
                                 " && chmod 600 /tmp/credentials/token",
}

#: Added to a unit's command line: the shipped config's Carbon nodes do not exist here, and
#: the final flush would wait for them the whole default graceful_timeout (15 s).
UNIT_EXTRA = {"tallyd-aggregator@.service": " --graceful-timeout 2"}

#: Runs in the root, in a network namespace of its own (only its loopback, so the shipped
#: configs' fixed ports clash with nothing): the unit's ExecStart as systemd would start it
#: (NOTIFY_SOCKET set), then READY=1, GET /healthz on the logged HTTP admin, SIGTERM, exit.
UNIT_PROBE = """
import json, os, re, shlex, socket, subprocess, sys, urllib.request
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
argv = shlex.split(sys.argv[1])
notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
if os.path.exists("/tmp/notify"):
    os.unlink("/tmp/notify")  # the previous unit's
notify.bind("/tmp/notify")
notify.settimeout(60)
log = open("/tmp/unit.log", "w+")
env = dict(os.environ, NOTIFY_SOCKET="/tmp/notify", CREDENTIALS_DIRECTORY="/tmp/credentials")
daemon = subprocess.Popen(argv, env=env, stderr=log, stdin=subprocess.DEVNULL)
result = {}
try:
    result["notify"] = notify.recv(100).decode()
    log.seek(0)
    address = re.findall(r"event=listening kind=http address=(\\S+)", log.read())[0]
    address = address.replace("0.0.0.0", "127.0.0.1")
    with urllib.request.urlopen(f"http://{address}/healthz", timeout=10) as answer:
        result["healthz"] = answer.status
finally:
    daemon.terminate()
    result["exit"] = daemon.wait(60)
    log.seek(0)
    result["log"] = log.read()[-3000:]
print(json.dumps(result))
"""


@pytest.mark.parametrize("unit", sorted(UNIT_SETUP))
def test_each_unit_execstart_serves_in_the_root(root: Root, unit: str) -> None:
    """The installed unit's own command line (``%i`` = main), with the shipped config."""
    text = (root.files / "lib/systemd/system" / unit).read_text()
    (line,) = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    command = line.removeprefix("ExecStart=").replace("%i", "main").replace(
        "${CREDENTIALS_DIRECTORY}", "/tmp/credentials") + UNIT_EXTRA.get(unit, "")
    root.run("sh", "-c", UNIT_SETUP[unit])
    result = root.run("unshare", "--net", "/usr/bin/python3.11", "-c", UNIT_PROBE, command,
                      timeout=180)
    outcome = json.loads(result.stdout)
    assert (outcome["notify"], outcome["healthz"], outcome["exit"]) == ("READY=1", 200, 0), \
        outcome["log"]


def test_purge_removes_every_file(root: Root) -> None:
    # Last (pytest runs a module's tests in file order): the other tests use the install.
    root.run("dpkg", "--purge", "tallyd")
    for left in ("usr/lib/tallyd", "etc/tallyd", "usr/bin/tallyd-proxy",
                 "lib/systemd/system/tallyd-proxy.service", "usr/share/doc/tallyd"):
        assert not (root.files / left).exists(), left
    assert root.run("dpkg-query", "-W", "tallyd", check=False).returncode != 0


