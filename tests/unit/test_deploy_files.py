"""Every command, flag and config key used in the deployment files exists in tallyd.

The files: everything under deploy/ (systemd units, the Debian packaging, Kubernetes
manifests, Dockerfiles, compose's TOML) and the top-level docker-compose.yml. Nothing is
listed by hand, so a new file is checked as soon as it exists:

* a command line is any run of tokens that starts with one of tallyd's commands
  (``tallyd-proxy``, ``tallyd-aggregator``, ``tallyd-ring``, by path too, or ``python -m
  proxy|aggregator|ringtool``), found in YAML values (a list of strings, a string; with the
  ``command``/``args`` of a Kubernetes container and the ``entrypoint``/``command`` of a
  compose service joined), in JSON arrays (Dockerfile ``CMD [...]``) and in the other files'
  lines (comments left out; ``\\`` continuations joined). It ends at a shell operator or the
  next command. Its subcommand (``tallyd-ring agent``) must exist, and each ``--flag`` must be
  one its argparse parser has (the parsers are the CLIs' own ``build_parser()``);
* a config is every ``*.toml`` file and every ``*.toml`` entry of a ConfigMap: its keys
  must be settings that the role's config declares (the role is the one in its name, or
  the one whose settings hold every key), and it must load as the daemon loads it
  (`common.config.config_from_mapping`: types and values).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml

from aggregator.cli import build_parser as aggregator_parser
from aggregator.config import AggregatorConfig
from common.config import config_from_mapping
from proxy.cli import build_parser as proxy_parser
from proxy.config import ProxyConfig
from ringtool.cli import build_parser as ring_parser

REPO = Path(__file__).resolve().parents[2]
PARSERS = {"tallyd-proxy": proxy_parser, "tallyd-aggregator": aggregator_parser,
           "tallyd-ring": ring_parser}
MODULES = {"proxy": "tallyd-proxy", "aggregator": "tallyd-aggregator", "ringtool": "tallyd-ring"}
CONFIGS: dict[str, type[Any]] = {"proxy": ProxyConfig, "aggregator": AggregatorConfig}
SHELL_OPERATORS = {";", "&&", "||", "|", "&", ">", ">>", "<", "2>&1", "then", "do"}


def deploy_files() -> list[Path]:
    files = [p for p in sorted((REPO / "deploy").rglob("*")) if p.is_file()]
    compose = REPO / "docker-compose.yml"
    return files + ([compose] if compose.exists() else [])


@attrs.frozen
class Invocation:
    where: str
    argv: tuple[str, ...]

    @property
    def command(self) -> str:
        return command_name(self.argv, 0) or ""


def command_name(tokens: tuple[str, ...] | list[str], i: int) -> str | None:
    """The tallyd command that starts at ``tokens[i]``, if one does."""
    # ExecStart=/usr/bin/tallyd-proxy, ExecStart=-tallyd-proxy (systemd's prefixes), a path
    token = re.sub(r"^[A-Za-z]+=[-@+!:]*", "", tokens[i])
    base = token.rsplit("/", 1)[-1]
    if base in PARSERS:
        return base
    if re.fullmatch(r"python[0-9.]*", base) and list(tokens[i + 1:i + 2]) == ["-m"] \
            and i + 2 < len(tokens) and tokens[i + 2] in MODULES:
        return MODULES[tokens[i + 2]]
    return None


def invocations_in(tokens: list[str], where: str) -> Iterator[Invocation]:
    """Each command line in one sequence of tokens."""
    i = 0
    while i < len(tokens):
        if command_name(tokens, i) is None:
            i += 1
            continue
        start = i
        i += 3 if tokens[i].rsplit("/", 1)[-1].startswith("python") else 1
        while i < len(tokens) and tokens[i] not in SHELL_OPERATORS \
                and command_name(tokens, i) is None:
            i += 1
        yield Invocation(where, tuple(t.rstrip(";") for t in tokens[start:i]))


def split(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError:  # prose with an apostrophe, say
        return text.split()


def yaml_invocations(value: Any, where: str) -> Iterator[Invocation]:
    if isinstance(value, dict):
        joined = []
        for first, second in (("command", "args"), ("entrypoint", "command")):
            if isinstance(value.get(first), list) and isinstance(value.get(second), list):
                joined.append([*value[first], *value[second]])
        for argv in joined:
            yield from invocations_in([str(t) for t in argv], where)
        for key, item in value.items():
            if joined and key in ("command", "args", "entrypoint"):
                continue
            yield from yaml_invocations(item, f"{where}.{key}")
    elif isinstance(value, list):
        if value and all(isinstance(t, (str, int, float)) for t in value):
            yield from invocations_in([str(t) for t in value], where)
        else:
            for n, item in enumerate(value):
                yield from yaml_invocations(item, f"{where}[{n}]")
    elif isinstance(value, str):
        yield from invocations_in(split(value), where)


def text_invocations(text: str, where: str) -> Iterator[Invocation]:
    for n, line in enumerate(re.sub(r"\\\n", " ", text).splitlines(), 1):
        if line.lstrip().startswith("#"):
            continue
        for array in re.findall(r"\[[^\[\]]*\]", line):  # CMD ["tallyd-proxy", ...]
            try:
                argv = json.loads(array)
            except ValueError:
                continue
            if isinstance(argv, list):
                yield from invocations_in([str(t) for t in argv], f"{where}:{n}")
        yield from invocations_in(split(line), f"{where}:{n}")


def yaml_documents(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def all_invocations() -> list[Invocation]:
    found: list[Invocation] = []
    for path in deploy_files():
        where = str(path.relative_to(REPO))
        if path.suffix in (".yaml", ".yml"):
            for doc in yaml_documents(path):
                found.extend(yaml_invocations(doc, where))
        elif path.suffix != ".toml":
            found.extend(text_invocations(path.read_text(errors="replace"), where))
    return found


def all_configs() -> list[tuple[str, str, dict[str, Any]]]:
    """(where, role hint, document) for every TOML file and ConfigMap TOML entry."""
    found = []
    for path in deploy_files():
        where = str(path.relative_to(REPO))
        if path.suffix == ".toml":
            found.append((where, path.name, tomllib.loads(path.read_text())))
        elif path.suffix in (".yaml", ".yml"):
            for doc in yaml_documents(path):
                if isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
                    for key, text in (doc.get("data") or {}).items():
                        if key.endswith(".toml"):
                            found.append((f"{where}:{doc['metadata']['name']}/{key}",
                                          f"{doc['metadata']['name']} {key}",
                                          tomllib.loads(text)))
    return found


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def unknown_parts(invocation: Invocation) -> list[str]:
    """What ``invocation`` uses that its command does not have."""
    command = invocation.command
    parser = PARSERS[command]()
    rest = list(invocation.argv[3 if invocation.argv[0].rsplit("/", 1)[-1]
                                .startswith("python") else 1:])
    commands = subparsers(parser)
    if commands:
        words = [t for t in rest if not t.startswith("-")]
        if words:
            if words[0] not in commands:
                return [f"subcommand {words[0]!r}"]
            parser = commands[words[0]]
    known = parser._option_string_actions
    return [f"flag {t.split('=')[0]}" for t in rest
            if t.startswith("--") and t.split("=")[0] not in known]


def config_class(hint: str, keys: set[str]) -> type[Any] | None:
    named = [cls for role, cls in CONFIGS.items() if role in hint]
    if len(named) == 1:
        return named[0]
    holding = [cls for cls in CONFIGS.values() if keys <= attrs.fields_dict(cls).keys()]
    return holding[0] if holding else None


def test_every_command_line_uses_flags_and_subcommands_that_exist() -> None:
    found = all_invocations()
    problems = [f"{i.where}: {' '.join(i.argv)}: no {part}"
                for i in found for part in unknown_parts(i)]
    assert not problems, "\n".join(problems)


def test_the_checker_reads_every_kind_of_file() -> None:
    """Each place that starts a daemon is read (a checker that reads nothing passes)."""
    wheres = {i.where.split(":")[0].split(".")[0] for i in all_invocations()}
    for unit in sorted((REPO / "deploy" / "systemd").glob("*.service")):
        assert str(unit.relative_to(REPO)).split(".")[0] in wheres, unit
    for manifest in ("proxy", "aggregator", "carbon"):
        assert f"deploy/kubernetes/{manifest}" in wheres
    commands = {i.command for i in all_invocations()}
    assert commands == set(PARSERS)


def test_every_config_key_is_a_declared_setting() -> None:
    configs = all_configs()
    assert len(configs) >= 4  # deploy/config's two, the two ConfigMaps (and compose's)
    problems = []
    for where, hint, document in configs:
        cls = config_class(hint, set(document))
        if cls is None:
            problems.append(f"{where}: keys of no role: {sorted(document)}")
            continue
        unknown = sorted(set(document) - attrs.fields_dict(cls).keys())
        if unknown:
            problems.append(f"{where}: not settings of {cls.__name__}: {unknown}")
            continue
        config_from_mapping(cls, document, source=where)  # types and values, as loaded
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("text", "problem"), [
    ("ExecStart=/usr/bin/tallyd-proxy --config /etc/p.toml --flush-intervall 10",
     "flag --flush-intervall"),
    ('CMD ["tallyd-aggregator", "--no-such"]', "flag --no-such"),
    ("tallyd-ring agnet --data-dir /d", "subcommand 'agnet'"),
    ("ExecStart=-tallyd-ring agent --listen 1:2 --datadir /d", "flag --datadir"),
    ("tallyd-ring agent --config x", "flag --config"),
    ("python3 -m proxy --listen udp://:1 && tallyd-aggregator --bogus=1", "flag --bogus"),
])
def test_the_checker_catches_a_misspelling(text: str, problem: str) -> None:
    parts = [p for i in text_invocations(text, "x") for p in unknown_parts(i)]
    assert parts == [problem]


def test_the_checker_reads_yaml_command_and_args_together() -> None:
    doc = {"containers": [{"command": ["tallyd-proxy"], "args": ["--listen", "--nope"]}],
           "services": {"a": {"entrypoint": ["tallyd-ring"], "command": ["agent", "--x"]}},
           "healthcheck": {"test": ["CMD", "tallyd-aggregator", "--bad"]}}
    parts = sorted(p for i in yaml_invocations(doc, "y") for p in unknown_parts(i))
    assert parts == ["flag --bad", "flag --nope", "flag --x"]


def test_a_config_key_of_no_role_is_reported() -> None:
    assert config_class("proxy.toml", {"listen", "aggregator"}) is ProxyConfig
    assert config_class("x.toml", {"carbon", "workers"}) is AggregatorConfig
    assert config_class("x.toml", {"carbon", "aggregator"}) is None
