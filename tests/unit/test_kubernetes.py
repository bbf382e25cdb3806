"""deploy/kubernetes/: valid against the Kubernetes API schemas, and consistent with tallyd.

The validator is PyPI's kubernetes-validate (a test extra): it checks each document against
the JSON schemas of the Kubernetes API that its wheel ships, strictly (an unknown field is an
error, as ``kubectl apply --validate=strict`` makes it), so no cluster and no download is
needed. Then what no schema knows: the ConfigMaps' TOML passes each role's
``--check-config``, the probes ask the daemons' own health (/healthz, /readyz) on the port
their config binds, and the ordered lists in the configs name exactly the StatefulSets' pods.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from aggregator.cli import main as aggregator_main
from proxy.cli import main as proxy_main

DIR = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
#: The Kubernetes release whose schemas the manifests are checked against.
KUBERNETES_VERSION = "1.30"


def documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(DIR.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d is not None)
    return docs


def find(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name)
    return found[0]


def containers() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for doc in documents():
        if doc["kind"] in ("Deployment", "StatefulSet"):
            for container in doc["spec"]["template"]["spec"]["containers"]:
                yield doc, container


def config(name: str, key: str) -> str:
    return str(find("ConfigMap", name)["data"][key])


@pytest.mark.parametrize("doc", documents(),
                         ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_manifest_is_valid_against_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_validator_refuses_an_unknown_field() -> None:
    doc = find("Deployment", "tallyd-proxy")
    broken = {**doc, "spec": {**doc["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_pieces_the_issue_asks_for_are_there() -> None:
    assert find("Deployment", "tallyd-proxy")
    assert find("Service", "tallyd-proxy")["spec"].get("clusterIP") != "None"
    assert find("Service", "tallyd-proxy-dns")["spec"]["clusterIP"] == "None"
    aggregators = find("StatefulSet", "tallyd-aggregator")
    assert aggregators["spec"]["serviceName"] == "tallyd-aggregator"
    carbon = find("StatefulSet", "tallyd-carbon")
    assert [t["metadata"]["name"] for t in carbon["spec"]["volumeClaimTemplates"]] == ["whisper"]
    for name in ("tallyd-aggregator", "tallyd-carbon"):
        assert find("Service", name)["spec"]["publishNotReadyAddresses"] is True


@pytest.mark.parametrize(("name", "key", "main"), [
    ("tallyd-proxy", "proxy.toml", proxy_main),
    ("tallyd-aggregator", "aggregator.toml", aggregator_main),
])
def test_configmap_passes_check_config(name: str, key: str, main: Any,
                                       tmp_path: Path) -> None:
    path = tmp_path / key
    path.write_text(config(name, key))
    assert main(["--config", str(path), "--check-config"]) == 0


def test_probes_ask_the_daemons_health_on_their_http_port() -> None:
    http_ports = {
        "tallyd-proxy": tomllib.loads(config("tallyd-proxy", "proxy.toml"))["http"],
        "tallyd-aggregator": tomllib.loads(config("tallyd-aggregator",
                                                  "aggregator.toml"))["http"],
    }
    checked = 0
    for doc, container in containers():
        command = container.get("command", [])
        if not command or not command[0].startswith("tallyd-"):
            continue
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        live = container["livenessProbe"]["httpGet"]
        ready = container["readinessProbe"]["httpGet"]
        assert (live["path"], ready["path"]) == ("/healthz", "/readyz")
        assert live["port"] == ready["port"]
        port = ports[live["port"]]
        name = doc["metadata"]["name"]
        if name in http_ports:
            assert http_ports[name] == f"0.0.0.0:{port}"  # reachable by the kubelet
        else:  # the ring agent serves its health on its --listen address
            assert command[command.index("--listen") + 1] == f"0.0.0.0:{port}"
        checked += 1
    assert checked == 3


def test_ordered_lists_name_the_statefulsets_pods() -> None:
    proxy = tomllib.loads(config("tallyd-proxy", "proxy.toml"))
    aggregator = tomllib.loads(config("tallyd-aggregator", "aggregator.toml"))
    aggregators = find("StatefulSet", "tallyd-aggregator")["spec"]
    carbon = find("StatefulSet", "tallyd-carbon")["spec"]
    assert proxy["aggregator"] == [
        f"tallyd-aggregator-{i}.{aggregators['serviceName']}:8125"
        for i in range(aggregators["replicas"])]
    assert [node.rsplit(":", 1)[0] for node in aggregator["carbon"]] == [
        f"tallyd-carbon-{i}.{carbon['serviceName']}:2003" for i in range(carbon["replicas"])]
    spool = {m["mountPath"] for _, c in containers() if c["name"] == "aggregator"
             for m in c["volumeMounts"] if m["name"] == "spool"}
    assert any(aggregator["carbon_spool_dir"].startswith(p + "/") for p in spool)
