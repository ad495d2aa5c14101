"""The Helm chart lints strictly, renders with several value sets, and every
rendered object validates against the Kubernetes schemas, all offline; each
option renders what it promises, and values.schema.json refuses bad values."""

import copy
import json
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "longbow"
RULES = CHART.parents[1] / "prometheus" / "longbow-rules.yaml"
DASHBOARD = CHART.parents[1] / "grafana" / "longbow.json"
KUBE_VERSION = "1.30.0"
VALUE_SETS = [None, "values-minimal.yaml", "values-full.yaml", "values-options.yaml"]


def values(name):
    return yaml.safe_load((CHART / "ci" / name).read_text()) if name else None


def render(name=None, overrides=None):
    """The chart's objects for a ci/ value set (or the defaults), with
    `overrides` merged over it as `--set`/`-f` would."""
    vals = values(name) or {}
    if overrides:
        vals = merged(vals, overrides)
    chart = helm.Chart.load(CHART)
    try:
        out = chart.render(vals or None, name="lb", namespace="data", is_install=True)
    finally:
        chart.close()
    docs = []
    for path, text in out.items():
        if not path.endswith(".yaml"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def merged(base, over):
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def one(docs, kind, name=None):
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, [d["metadata"]["name"] for d in docs if d["kind"] == kind])
    return found[0]


def pod_spec(docs):
    return one(docs, "StatefulSet")["spec"]["template"]["spec"]


def server(docs):
    return next(c for c in pod_spec(docs)["containers"] if c["name"] == "longbow")


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def hook_pod(docs):
    pods = [d for d in docs if d["kind"] == "Pod"]
    assert len(pods) == 1, pods
    return pods[0]


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
    cm = one(docs, "ConfigMap", "lb-longbow")
    assert "LONGBOW_MAX_MEMORY=8GiB" in cm["data"]["longbow.conf"]
    assert sts["spec"]["replicas"] == 1
    assert any(d["kind"] == "PrometheusRule" for d in docs)
    assert one(docs, "ConfigMap", "lb-longbow-dashboard")["metadata"]["annotations"] == {"grafana_folder": "Storage"}


SHARED = {"persistence": {"snapshots": {"objectStore": {
    "url": "s3://lake/longbow", "existingSecret": "longbow-s3",
    "env": {"AWS_REGION": "eu-west-1", "AWS_ENDPOINT_URL": "http://minio.data:9000"}}}}}


def test_replicas_are_the_nodes_of_one_store():
    docs = render("values-minimal.yaml", overrides={"replicaCount": 3, **SHARED})
    for d in docs:
        if not d["apiVersion"].startswith("monitoring.coreos.com"):
            kubernetes_validate.validate(d, KUBE_VERSION, strict=True)
    sts = one(docs, "StatefulSet")
    assert sts["spec"]["replicas"] == 3
    container = server(docs)
    env = env_of(container)
    assert env["LONGBOW_NODE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    port = one(docs, "Service", "lb-longbow-headless")["spec"]["ports"][0]["port"]
    assert env["LONGBOW_PEERS"]["value"].split(",") == [
        f"grpc://lb-longbow-{i}.lb-longbow-headless.data.svc:{port}" for i in range(3)
    ]
    # One object store for all: the snapshot tables, and no snapshots claim.
    assert env["LONGBOW_SNAPSHOT_PATH"]["value"] == "s3://lake/longbow"
    assert env["AWS_REGION"]["value"] == "eu-west-1"
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio.data:9000"
    assert container["envFrom"] == [{"secretRef": {"name": "longbow-s3"}}]
    assert [c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]] == ["wal"]
    assert "snapshots" not in {m["name"] for m in container["volumeMounts"]}
    assert "LONGBOW_PEER_CA" not in env
    # One replica: no peers, today's single-node store.
    env = env_of(server(render("values-minimal.yaml")))
    assert "LONGBOW_PEERS" not in env and "LONGBOW_NODE_ID" not in env


def test_replicas_reach_each_other_through_the_network_policy():
    over = {"replicaCount": 3, "networkPolicy": {"enabled": True}, **SHARED}
    policy = one(render("values-full.yaml", overrides=over), "NetworkPolicy")
    sources = policy["spec"]["ingress"][0]["from"]
    selectors = [f["podSelector"]["matchLabels"] for f in sources if "podSelector" in f]
    assert {"app.kubernetes.io/name": "longbow", "app.kubernetes.io/instance": "lb"} in selectors, selectors


def test_several_replicas_need_a_shared_object_store():
    for n in (2, 3):
        with pytest.raises(helm.HelmRenderError) as e:
            render("values-full.yaml", overrides={"replicaCount": n})
        message = str(e.value)
        assert f"replicaCount is {n} without persistence.snapshots.objectStore.url" in message, message
    for n in (0, 1):  # 0: scaled down for maintenance
        assert one(render("values-full.yaml", overrides={"replicaCount": n}), "StatefulSet")["spec"]["replicas"] == n


@pytest.mark.parametrize("trust_ca", [True, False])
def test_several_replicas_with_tls_talk_tls_to_each_other(trust_ca):
    over = {"replicaCount": 3, "tls": {"enabled": True, "secretName": "t", "peersTrustCa": trust_ca}, **SHARED}
    docs = render("values-full.yaml", overrides=over)
    for d in docs:
        if not d["apiVersion"].startswith("monitoring.coreos.com"):
            kubernetes_validate.validate(d, KUBE_VERSION, strict=True)
    env = env_of(server(docs))
    assert all(p.startswith("grpc+tls://lb-longbow-") for p in env["LONGBOW_PEERS"]["value"].split(","))
    assert env["LONGBOW_TLS_CERT"]["value"] == "/etc/longbow-tls/tls.crt"
    if trust_ca:
        assert env["LONGBOW_PEER_CA"]["value"] == "/etc/longbow-tls/ca.crt"
    else:
        assert "LONGBOW_PEER_CA" not in env


def test_one_replica_on_an_object_store():
    docs = render("values-minimal.yaml", overrides=SHARED)
    sts = one(docs, "StatefulSet")
    assert [c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]] == ["wal"]
    assert env_of(server(docs))["LONGBOW_SNAPSHOT_PATH"]["value"] == "s3://lake/longbow"


def test_alerts_and_dashboard_are_the_shipped_files():
    """The PrometheusRule's spec is deploy/prometheus/longbow-rules.yaml and
    the dashboard ConfigMap carries deploy/grafana/longbow.json, unchanged
    (files/ links to them: one source)."""
    for name in ("longbow-rules.yaml", "longbow-dashboard.json"):
        assert (CHART / "files" / name).is_symlink()
    docs = render(overrides={"prometheusRule": {"enabled": True, "labels": {"release": "kps"}},
                             "grafanaDashboard": {"enabled": True, "labels": {"team": "data"}}})
    rule = one(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["metadata"]["name"] == "lb-longbow"
    assert rule["metadata"]["labels"]["release"] == "kps"
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    assert "{{ $labels.instance }}" in rule["spec"]["groups"][0]["rules"][0]["annotations"]["summary"]
    dashboard = one(docs, "ConfigMap", "lb-longbow-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["labels"]["team"] == "data"
    assert json.loads(dashboard["data"]["longbow.json"]) == json.loads(DASHBOARD.read_text())
    defaults = render()
    assert not [d for d in defaults if d["kind"] == "PrometheusRule"]
    assert [d["metadata"]["name"] for d in defaults if d["kind"] == "ConfigMap"] == ["lb-longbow"]


SELECTOR = {"app.kubernetes.io/name": "longbow", "app.kubernetes.io/instance": "lb"}


def test_defaults():
    docs = render()
    sts = one(docs, "StatefulSet")
    spec = pod_spec(docs)
    # Its own ServiceAccount, and no API token in the pod.
    sa = one(docs, "ServiceAccount")
    assert sa["metadata"]["name"] == "lb-longbow" and sa["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == "lb-longbow" and spec["automountServiceAccountToken"] is False
    # Shards follow the CPU limit, in whole CPUs.
    shards = env_of(server(docs))["LONGBOW_SHARDS"]
    assert "value" not in shards
    assert shards["valueFrom"]["resourceFieldRef"] == {"containerName": "longbow", "resource": "limits.cpu", "divisor": "1"}
    # A soft anti-affinity by host, and a spread over zones that counts this release's pods.
    preferred = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred == [{"weight": 100, "podAffinityTerm": {
        "topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": SELECTOR}}}]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in spec["affinity"]["podAntiAffinity"]
    assert spec["topologySpreadConstraints"] == [{
        "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": SELECTOR}}]
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    assert sts["spec"]["template"]["metadata"]["labels"] == SELECTOR
    assert "annotations" not in sts["spec"]["template"]["metadata"]
    for absent in ("imagePullSecrets", "priorityClassName"):
        assert absent not in spec
    assert not [d for d in docs if d["kind"] == "NetworkPolicy"]
    client = one(docs, "Service", "lb-longbow")
    assert "annotations" not in client["metadata"]
    # The security context is the image's user, unchanged by the new values.
    assert spec["securityContext"] == {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
                                       "seccompProfile": {"type": "Localhost",
                                                          "localhostProfile": "longbow/seccomp-longbow.json"}}
    assert server(docs)["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                               "capabilities": {"drop": ["ALL"], "add": ["IPC_LOCK", "SYS_RESOURCE"]}}


def test_reloadable_config_change_keeps_the_pod_template():
    """helm upgrade after a ConfigMap edit must not restart the pods (SIGHUP reloads it)."""
    before = render()
    after = render(overrides={"config": {"reloadable": {"LONGBOW_MAX_MEMORY": "2GiB", "LONGBOW_SNAPSHOT_INTERVAL": "5m"}}})
    assert one(before, "ConfigMap")["data"] != one(after, "ConfigMap")["data"]
    assert "LONGBOW_MAX_MEMORY=2GiB" in one(after, "ConfigMap")["data"]["longbow.conf"]
    assert one(before, "StatefulSet") == one(after, "StatefulSet")


def test_shards_from_values():
    for shards in ("2", 2):
        env = env_of(server(render(overrides={"shards": shards})))
        assert env["LONGBOW_SHARDS"] == {"name": "LONGBOW_SHARDS", "value": "2"}


def test_helm_test_pod():
    docs = render()
    pod = hook_pod(docs)
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["metadata"]["labels"]["lb-longbow-client"] == "true"
    assert pod["spec"]["restartPolicy"] == "Never" and pod["spec"]["automountServiceAccountToken"] is False
    c = pod["spec"]["containers"][0]
    assert c["image"] == "python:3.12-slim"
    script = (CHART / "files" / "helm-test.py").read_text()
    assert c["command"] == ["python", "-c", script]
    compile(script, "helm-test.py", "exec")
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["LONGBOW_TEST_ADDR"] == "grpc://lb-longbow.data.svc:3000"
    assert env["LONGBOW_TEST_PIP"] == "pyarrow>=17"
    assert "LONGBOW_TEST_TLS_DIR" not in env and "LONGBOW_TEST_TOKEN" not in env
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert {m["mountPath"] for m in c["volumeMounts"]} == {"/tmp"}
    assert not [d for d in render(overrides={"tests": {"enabled": False}}) if d["kind"] == "Pod"]


def test_every_option():
    docs = render("values-options.yaml")
    sts = one(docs, "StatefulSet", "store")
    spec = pod_spec(docs)
    meta = sts["spec"]["template"]["metadata"]
    # fullnameOverride names everything; the selector's labels win over podLabels.
    assert sts["spec"]["serviceName"] == "store-headless"
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "Service"} == {"store", "store-headless"}
    assert meta["labels"] == {**SELECTOR, "team": "data"}
    assert meta["annotations"] == {"example.com/owner": "data"}
    sa = one(docs, "ServiceAccount", "store-sa")
    assert sa["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/longbow"}
    assert spec["serviceAccountName"] == "store-sa"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["priorityClassName"] == "storage-critical"
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Delete", "whenScaled": "Retain"}
    required = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert required == [{"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": SELECTOR}}]
    assert spec["topologySpreadConstraints"] == [{
        "maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": SELECTOR}}]
    assert one(docs, "Service", "store")["metadata"]["annotations"] == {
        "service.beta.kubernetes.io/aws-load-balancer-internal": "true"}
    assert "annotations" not in one(docs, "Service", "store-headless")["metadata"]
    c = server(docs)
    env = env_of(c)
    assert env["LONGBOW_SHARDS"]["value"] == "6"
    assert env["LONGBOW_MAX_CONNECTIONS"]["value"] == "4096"
    assert env["LONGBOW_AUTH_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "store-auth", "key": "token"}}
    assert env["LONGBOW_TLS_CLIENT_CA"]["value"] == "/etc/longbow-tls/ca.crt"
    assert {"name": "scratch", "mountPath": "/scratch"} in c["volumeMounts"]
    assert {"name": "scratch", "emptyDir": {}} in spec["volumes"]
    # TLS probes go to the plain metrics port.
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": 9090}

    np = one(docs, "NetworkPolicy", "store")
    assert np["spec"]["podSelector"] == {"matchLabels": SELECTOR}
    assert np["spec"]["policyTypes"] == ["Ingress"]
    flight, metrics = np["spec"]["ingress"]
    assert flight["ports"] == [{"port": 3000, "protocol": "TCP"}]
    assert flight["from"] == [
        {"podSelector": {"matchLabels": {"store-client": "true"}}},
        {"podSelector": {"matchLabels": {"app": "producer"}}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "analytics"}}},
    ]
    assert metrics == {"ports": [{"port": 9090, "protocol": "TCP"}],
                       "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]}

    # The test pod passes the policy, speaks TLS with the CA only (never the
    # server's key), presents the client certificate and the token.
    pod = hook_pod(docs)
    assert pod["metadata"]["labels"]["store-client"] == "true"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    tenv = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert tenv["LONGBOW_TEST_ADDR"]["value"] == "grpc+tls://store.data.svc:3000"
    assert tenv["LONGBOW_TEST_SERVER_NAME"]["value"] == "store.data.svc.cluster.local"
    assert tenv["LONGBOW_TEST_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "store-auth", "key": "token"}}
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert vols["tls"]["secret"]["secretName"] == "store-tls"
    assert vols["tls"]["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    assert vols["client-tls"]["secret"]["secretName"] == "store-client-tls"


def test_names_and_service_account_choices():
    docs = render(overrides={"nameOverride": "lbw"})
    sts = one(docs, "StatefulSet", "lb-lbw")
    assert sts["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "lbw", "app.kubernetes.io/instance": "lb"}
    docs = render(overrides={"serviceAccount": {"create": False, "name": "shared"}})
    assert not [d for d in docs if d["kind"] == "ServiceAccount"]
    assert pod_spec(docs)["serviceAccountName"] == "shared"
    assert pod_spec(render(overrides={"serviceAccount": {"create": False}}))["serviceAccountName"] == "default"
    spec = pod_spec(render(overrides={"serviceAccount": {"automountServiceAccountToken": True}}))
    assert spec["automountServiceAccountToken"] is True


def test_scheduling_overrides():
    mine = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "storage", "operator": "In", "values": ["nvme"]}]}]}}}
    assert pod_spec(render(overrides={"affinity": mine}))["affinity"] == mine
    spec = pod_spec(render(overrides={"podAntiAffinityPreset": "none", "topologySpreadConstraints": []}))
    assert "affinity" not in spec and "topologySpreadConstraints" not in spec
    own = {"maxSkew": 2, "topologyKey": "rack", "whenUnsatisfiable": "DoNotSchedule",
           "labelSelector": {"matchLabels": {"tier": "storage"}}}
    assert pod_spec(render(overrides={"topologySpreadConstraints": [own]}))["topologySpreadConstraints"] == [own]


def test_network_policy_without_metrics_peers():
    np = one(render(overrides={"networkPolicy": {"enabled": True}}), "NetworkPolicy")
    assert np["spec"]["ingress"] == [{"ports": [{"port": 3000, "protocol": "TCP"}],
                                      "from": [{"podSelector": {"matchLabels": {"lb-longbow-client": "true"}}}]}]


def test_root_with_capabilities_renders():
    """The documented memlock fix that needs no node change: run as root."""
    docs = render(overrides={"podSecurityContext": {"runAsNonRoot": False, "runAsUser": 0, "runAsGroup": 0}})
    sc = pod_spec(docs)["securityContext"]
    assert (sc["runAsNonRoot"], sc["runAsUser"], sc["runAsGroup"], sc["fsGroup"]) == (False, 0, 0, 10001)
    for d in docs:
        if not d["apiVersion"].startswith("monitoring.coreos.com"):
            kubernetes_validate.validate(d, KUBE_VERSION, strict=True)


def test_mutual_tls_test_pod_needs_a_client_certificate():
    with pytest.raises(helm.HelmError, match="tests.tlsClientSecretName"):
        render(overrides={"tls": {"enabled": True, "secretName": "t", "clientAuth": True}})
    render(overrides={"tls": {"enabled": True, "secretName": "t", "clientAuth": True}, "tests": {"enabled": False}})


BAD_VALUES = [
    {"replicaCount": "3"},
    {"replicaCount": -1},
    {"shards": 0},
    {"shards": "four"},
    {"serviceAcount": {"create": False}},  # a misspelt key
    {"serviceAccount": {"create": "yes"}},
    {"image": {"pullPolicy": "Sometimes"}},
    {"service": {"type": "ExternalName"}},
    {"service": {"flightPort": 70000}},
    {"seccompProfile": {"type": "Localhost", "localhostProfile": ""}},
    {"seccompProfile": {"type": "Default"}},
    {"tls": {"enabled": True}},
    {"config": {"reloadable": {"LONGBOW_MAX_MEMORY": "lots"}}},
    {"config": {"reloadable": {"LONGBOW_MAX_WAL_SIZE": "1GiB"}}},  # not reloadable
    {"config": {"listenAddr": "localhost:3000"}},
    {"persistence": {"wal": {"size": "big"}}},
    {"persistence": {"snapshots": {"mountPath": "snapshots"}}},
    {"persistence": {"snapshots": {"objectStore": {"url": "/mnt/lake"}}}},  # a path, not an object store
    {"persistence": {"snapshots": {"objectStore": {"env": {"AWS-REGION": "x"}}}}},
    {"tls": {"enabled": True, "secretName": "t", "peersTrustCa": "yes"}},
    {"persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Keep"}},
    {"podAntiAffinityPreset": "medium"},
    {"topologySpreadConstraints": [{"maxSkew": 0, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway"}]},
    {"resources": {"limits": {"cpu": "four"}}},
    {"networkPolicy": {"flight": {"from": [{"podSelectr": {}}]}}},
    {"imagePullSecrets": ["regcred"]},
    {"extraEnv": [{"value": "x"}]},
    {"extraVolumeMounts": [{"name": "x"}]},
    {"podLabels": {"team": 7}},
    {"terminationGracePeriodSeconds": -1},
    {"podDisruptionBudget": {"maxUnavailable": "half"}},
    {"tests": {"image": {"tag": ""}}},
    {"prometheusRule": {"enabled": "yes"}},
    {"grafanaDashboard": {"labels": {"grafana_dashboard": 1}}},
]


@pytest.mark.parametrize("bad", BAD_VALUES, ids=lambda v: json.dumps(v)[:60])
def test_schema_refuses(bad):
    with pytest.raises(helm.HelmValuesError):
        render(overrides=bad)
    report = helm.lint(CHART, merged({}, bad), strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"], report


def test_schema_accepts():
    for good in ({"shards": 8}, {"shards": "8"}, {"podDisruptionBudget": {"maxUnavailable": "50%"}},
                 {"resources": {"limits": {"cpu": 4, "memory": "12Gi"}, "requests": {"cpu": "500m"}}},
                 {"config": {"reloadable": {"LONGBOW_MAX_MEMORY": "512 MiB", "LONGBOW_SNAPSHOT_INTERVAL": "1h 30m"}}},
                 {"config": {"listenAddr": "[::]:3000"}}):
        render(overrides=good)


def test_schema_covers_every_value():
    """Each key of values.yaml is described by values.schema.json (the schema
    refuses keys it does not know, so an undescribed value could not be set)."""
    schema = json.loads((CHART / "values.schema.json").read_text())

    def resolve(node):
        while "$ref" in node:
            node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
        return node

    def walk(value, node, path):
        node = resolve(node)
        if isinstance(value, dict) and node.get("type") == "object" and "properties" in node:
            for k, v in value.items():
                assert k in node["properties"] or node.get("additionalProperties", True) is not False, path + [k]
                if k in node["properties"]:
                    walk(v, node["properties"][k], path + [k])

    default = yaml.safe_load((CHART / "values.yaml").read_text())
    walk(default, schema, [])
    assert set(default) <= set(schema["properties"])
