"""The Helm chart lints strictly, renders with several value sets, and every
rendered object validates against the Kubernetes schemas, all offline."""

from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "longbow"
KUBE_VERSION = "1.30.0"
VALUE_SETS = [None, "values-minimal.yaml", "values-full.yaml"]


def values(name):
    return yaml.safe_load((CHART / "ci" / name).read_text()) if name else None


def render(name):
    chart = helm.Chart.load(CHART)
    try:
        out = chart.render(values(name), name="lb", namespace="data", is_install=True)
    finally:
        chart.close()
    docs = []
    for path, text in out.items():
        if not path.endswith(".yaml"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_lint_strict(value_set):
    report = helm.lint(CHART, values(value_set), strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_rendered_objects_validate(value_set):
    docs = render(value_set)
    kinds = sorted(d["kind"] for d in docs)
    assert {"StatefulSet", "Service", "ConfigMap"} <= set(kinds), kinds
    for d in docs:
        if d["apiVersion"].startswith("monitoring.coreos.com"):
            continue  # a CRD, not in the core schemas
        kubernetes_validate.validate(d, KUBE_VERSION, strict=True)


def test_statefulset_shape():
    docs = render("values-full.yaml")
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    claims = {c["metadata"]["name"]: c for c in sts["spec"]["volumeClaimTemplates"]}
    assert set(claims) == {"wal", "snapshots"}
    c = sts["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["LONGBOW_DATA_PATH"] == "/data" and env["LONGBOW_SNAPSHOT_PATH"] == "/snapshots"
    assert env["LONGBOW_CONFIG"] == "/etc/longbow/longbow.conf"
    assert c["readinessProbe"]["grpc"]["port"] == 3000
    assert "IPC_LOCK" in c["securityContext"]["capabilities"]["add"]
    assert sts["spec"]["template"]["spec"]["securityContext"]["seccompProfile"]["type"] == "Localhost"
    assert any(d["kind"] == "ServiceMonitor" for d in docs)
    assert any(d["kind"] == "PodDisruptionBudget" for d in docs)
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    assert "LONGBOW_MAX_MEMORY=8GiB" in cm["data"]["longbow.conf"]
