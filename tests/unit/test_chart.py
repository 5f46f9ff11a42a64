"""The Helm chart, rendered offline by the real helm: lint, what each switch renders, values and their schema, RBAC.

The control plane validates the same manifests (server-side dry run) and installs the chart in
tests/integration/test_chart.py.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest
import yaml

from tests.helm import ALL_ON, CHART, by_kind, helm, one, template, template_error
from trainguard.api import crdgen, metrics

VALUES = CHART / "values.yaml"
SCHEMA = CHART / "values.schema.json"
DASHBOARD = CHART / "files" / "dashboards" / "trainguard.json"
RULES = CHART / "files" / "prometheus-rules.yaml"
CLUSTER_SCOPED = {
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
}


@pytest.mark.parametrize("values", [{}, ALL_ON], ids=["defaults", "all-on"])
def test_helm_lint_strict(values: dict[str, str]) -> None:
    args = [a for k, v in values.items() for a in ("--set", f"{k}={v}")]
    out = helm("lint", "--strict", str(CHART), *args).stdout
    assert "1 chart(s) linted, 0 chart(s) failed" in out, out


def test_defaults_render_the_operator_and_its_guard_rails() -> None:
    docs = template()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "Deployment",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Secret",
            "Service",
            "ServiceAccount",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
        ]
    )
    for doc in docs:
        if doc["kind"] in {"Role", "RoleBinding"}:  # the cluster DNS Service's, the one grant in kube-system
            assert doc["metadata"]["namespace"] == "kube-system", doc["kind"]
        elif doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"]["namespace"] == "trainguard-system", doc["kind"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "trainguard"


def test_every_optional_part_renders_when_on() -> None:
    docs = template(ALL_ON)
    monitor = one(docs, "ServiceMonitor")
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["honorLabels"] is True  # the metrics' namespace and job name the AgentTrainingJob
    assert endpoint["port"] == "metrics"
    assert set(monitor["spec"]["targetLabels"]) == {"app.kubernetes.io/name", "app.kubernetes.io/component"}
    service = one(docs, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()

    pods = one(docs, "PodMonitor")
    assert pods["spec"]["namespaceSelector"] == {"any": True}
    assert pods["spec"]["podMetricsEndpoints"][0]["portNumber"] == 9400

    rule = one(docs, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(RULES.read_text())

    board = one(docs, "ConfigMap")
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(board["data"]["trainguard.json"]) == json.loads(DASHBOARD.read_text())
    assert json.loads(board["data"]["trainguard.json"])["schemaVersion"] >= 39


def test_dashboard_namespace_can_be_grafanas() -> None:
    board = one(template({"dashboard.enabled": "true", "dashboard.namespace": "grafana"}), "ConfigMap")
    assert board["metadata"]["namespace"] == "grafana"


def test_the_crd_is_the_generated_one_kept_on_uninstall() -> None:
    crd = one(template(), "CustomResourceDefinition")
    want = crdgen.crd()
    assert crd["spec"] == want["spec"]
    assert crd["metadata"]["name"] == want["metadata"]["name"]
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_crds_keep_false_lets_helm_delete_the_crd() -> None:
    crd = one(template({"crds.keep": "false"}), "CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in crd["metadata"].get("annotations", {})


def test_crds_enabled_false_renders_no_crd() -> None:
    assert not by_kind(template({"crds.enabled": "false"}), "CustomResourceDefinition")


def test_the_chart_has_no_crds_directory() -> None:
    # Helm installs crds/ unconditionally and never upgrades or deletes it: crds.enabled could not govern it.
    assert not (CHART / "crds").exists()


def test_deployment_runs_one_operator_with_the_contracted_flags() -> None:
    deploy = one(template(), "Deployment")
    spec = deploy["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == one(template(), "ServiceAccount")["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["args"][0] == "run"
    assert f"--metrics-port={metrics.OPERATOR_METRICS_PORT}" in container["args"]
    assert not any(a.startswith("--namespace") for a in container["args"])  # every namespace
    assert "--sensor-image=ghcr.io/trainguard/trainguard:0.1.0" in container["args"]
    assert container["ports"][0] == {"name": "metrics", "containerPort": 8080, "protocol": "TCP"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert "--health-port=8081" in container["args"] and "--sensor-uid=65532" in container["args"]
    assert not any(a.startswith("--admission-policy") for a in container["args"])  # the chart installs it
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"


def test_sensor_image_follows_a_digest() -> None:
    digest = "sha256:" + "a" * 64
    deploy = one(template({"sensor.image.digest": digest}), "Deployment")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert f"--sensor-image=ghcr.io/trainguard/trainguard@{digest}" in container["args"]


def test_more_than_one_replica_is_refused_with_the_reason() -> None:
    assert "/operator/replicas': maximum: got 2, want 1" in template_error({"operator.replicas": "2"})
    # The template refuses it too, for whoever skips the schema.
    refused = template_error({"operator.replicas": "2"}, extra=["--skip-schema-validation"])
    assert "trainguard runs one replica" in refused


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"bogus": "1"}, "additional properties 'bogus' not allowed"),
        ({"operator.bogus": "1"}, "additional properties 'bogus' not allowed"),
        ({"operator.logFormat": "xml"}, "logFormat"),
        ({"sensor.port": "70000"}, "port"),
        ({"image.digest": "latest"}, "digest"),
        ({"admissionPolicy.validationActions": "{Allow}"}, "validationActions"),
        ({"serviceMonitor.interval": "soon"}, "interval"),
    ],
)
def test_bad_values_are_refused_by_the_schema(values: dict[str, str], expected: str) -> None:
    assert expected in template_error(values)


def _walk_schema(node: dict[str, Any], path: str = "") -> list[str]:
    """Object schemas of the chart's own shape without additionalProperties: false (maps give a schema)."""
    bad = []
    if node.get("type") == "object":
        extra = node.get("additionalProperties")
        if extra is None or extra is True:
            bad.append(path or "(root)")
    for key, child in node.get("properties", {}).items():
        bad += _walk_schema(child, f"{path}.{key}")
    if isinstance(node.get("additionalProperties"), dict):
        bad += _walk_schema(node["additionalProperties"], f"{path}.*")
    if isinstance(node.get("items"), dict):
        bad += _walk_schema(node["items"], f"{path}[]")
    return bad


def test_schema_closes_every_object() -> None:
    schema = json.loads(SCHEMA.read_text())
    # Objects of Kubernetes' own shape inside the chart's (selectors, valueFrom) are left to the API server.
    open_k8s = re.compile(
        r"\.(namespaceSelector|podSelector|ipBlock|valueFrom|nodeAffinity|podAffinity|podAntiAffinity)$"
    )
    assert [p for p in _walk_schema(schema) if not open_k8s.search(p)] == []


def _keys(values: Any, prefix: str = "") -> set[str]:
    if not isinstance(values, dict):
        return set()
    out = set()
    for key, value in values.items():
        out.add(prefix + key)
        out |= _keys(value, f"{prefix}{key}.")
    return out


def _schema_keys(node: dict[str, Any], prefix: str = "") -> set[str]:
    out = set()
    for key, child in node.get("properties", {}).items():
        out.add(prefix + key)
        out |= _schema_keys(child, f"{prefix}{key}.")
    return out


def test_schema_accepts_values_yaml_and_describes_each_of_its_keys() -> None:
    schema = json.loads(SCHEMA.read_text())
    values = yaml.safe_load(VALUES.read_text())
    jsonschema.validate(values, schema)
    # Keys below a map of labels or a resource list are data, not settings.
    data = re.compile(
        r"^(operator\.resources\.(requests|limits)\.|networkPolicy\.dns\.\w+Selector\.|dashboard\.labels\.)"
    )
    missing = {k for k in _keys(values) if not data.match(k)} - _schema_keys(schema)
    assert missing == set()


#: Values whose children are Kubernetes' own fields or data (documented as a whole by the comment above them).
K8S_SHAPED = ("operator.resources", "podSecurityContext", "securityContext", "networkPolicy.dns", "dashboard.labels")


def test_every_value_has_a_prose_comment() -> None:
    lines = VALUES.read_text().splitlines()
    stack: list[tuple[int, str]] = []
    undocumented = []
    for i, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z][\w.-]*):(.*)$", line)
        if not match:
            continue
        indent, key, rest = len(match.group(1)), match.group(2), match.group(3).strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [key])
        stack.append((indent, key))
        section = rest == "" and i + 1 < len(lines) and not lines[i + 1].lstrip().startswith("-")
        if section or any(path.startswith(p + ".") for p in K8S_SHAPED):
            continue
        above = lines[i - 1].strip() if i else ""
        if not above.startswith("#") or len(above) < 12:
            undocumented.append(path)
    assert undocumented == []


def test_rbac_grants_only_what_the_issues_need() -> None:
    role = one(template(), "ClusterRole")
    rules = role["rules"]
    grants = {(g, r): set(rule["verbs"]) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]}
    for rule in rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        assert not {"deletecollection", "escalate", "bind", "impersonate"} & set(rule["verbs"])
    assert grants == {
        ("", "namespaces"): {"list"},
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
        ("trainguard.io", "agenttrainingjobs"): {"get", "list", "watch", "patch"},
        ("trainguard.io", "agenttrainingjobs/status"): {"patch"},
        ("batch", "jobs"): {"get", "list", "watch", "create", "patch", "delete"},
        ("", "pods"): {"get", "list", "watch", "patch", "delete"},
        ("", "pods/status"): {"patch"},
        ("networking.k8s.io", "networkpolicies"): {"list", "watch", "create", "patch", "update", "delete"},
        ("", "serviceaccounts"): {"list", "watch", "create", "patch"},
        ("", "secrets"): {"create", "patch"},
        ("", "events"): {"create"},
    }


def test_the_dns_service_is_the_one_thing_read_in_kube_system() -> None:
    docs = template()
    (role,) = by_kind(docs, "Role")
    assert role["metadata"] == {**role["metadata"], "name": "tg-trainguard-dns", "namespace": "kube-system"}
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["services"], "resourceNames": ["kube-dns"], "verbs": ["get"]}
    ]
    (binding,) = by_kind(docs, "RoleBinding")
    assert binding["metadata"]["namespace"] == "kube-system"
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tg-trainguard-dns"}
    sa = {"kind": "ServiceAccount", "name": "tg-trainguard", "namespace": "trainguard-system"}
    assert binding["subjects"] == [sa]
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert not [a for a in container["args"] if a.startswith("--dns-ip")]


def test_dns_ips_replace_the_kube_system_grant() -> None:
    docs = template({"operator.dnsIPs": "{10.96.0.10,fd00::a}"})
    assert by_kind(docs, "Role") == [] and by_kind(docs, "RoleBinding") == []
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [a for a in container["args"] if a.startswith("--dns-ip")] == ["--dns-ip=10.96.0.10", "--dns-ip=fd00::a"]
    assert "does not match pattern" in template_error({"operator.dnsIPs": "{kube-dns.kube-system}"})


def test_every_rbac_rule_says_why() -> None:
    lines = (CHART / "templates" / "rbac.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.lstrip().startswith("- apiGroups:"):
            assert lines[i - 1].lstrip().startswith("#"), f"rbac.yaml:{i + 1}: a rule without a comment"


def test_watch_namespaces_gives_roles_there_and_flags() -> None:
    docs = template({"operator.watchNamespaces": "{ml,research}"})
    roles = by_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["kube-system", "ml", "research"]
    bindings = by_kind(docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["kube-system", "ml", "research"]
    for b in bindings:
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": "tg-trainguard", "namespace": "trainguard-system"}]
    cluster = one(docs, "ClusterRole")
    assert {r for rule in cluster["rules"] for r in rule["resources"]} == {"namespaces", "customresourcedefinitions"}
    # kopf lists and watches namespaces only when it runs namespaced.
    assert next(rule["verbs"] for rule in cluster["rules"] if rule["resources"] == ["namespaces"]) == ["list", "watch"]
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert "--namespace=ml" in container["args"] and "--namespace=research" in container["args"]


def test_the_operators_networkpolicy_admits_only_what_it_needs() -> None:
    policy = one(template(), "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    ports = sorted((p["port"], p["protocol"]) for rule in policy["egress"] for p in rule["ports"])
    assert ports == [(53, "TCP"), (53, "UDP"), (443, "TCP"), (6443, "TCP"), (9090, "TCP"), (9400, "TCP")]
    sensors = next(r for r in policy["egress"] if r["ports"] == [{"port": 9400, "protocol": "TCP"}])
    assert sensors["to"][0]["podSelector"]["matchExpressions"] == [{"key": "trainguard.io/job", "operator": "Exists"}]
    # The Prometheus servers that jobs name for DCGM series (without it every such job would be Degraded).
    prometheus = next(r for r in policy["egress"] if r["ports"] == [{"port": 9090, "protocol": "TCP"}])
    assert prometheus["to"] == [
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}
    ]


def test_networkpolicy_prometheus_egress_can_be_narrowed_or_dropped() -> None:
    narrowed = one(
        template(
            extra=[
                "--set-json",
                'networkPolicy.prometheus.to=[{"ipBlock":{"cidr":"10.1.2.3/32"}}]',
                "--set-json",
                "networkPolicy.prometheus.ports=[9091]",
            ]
        ),
        "NetworkPolicy",
    )["spec"]
    assert {"to": [{"ipBlock": {"cidr": "10.1.2.3/32"}}], "ports": [{"port": 9091, "protocol": "TCP"}]} in narrowed[
        "egress"
    ]
    dropped = one(template(extra=["--set-json", "networkPolicy.prometheus.to=[]"]), "NetworkPolicy")["spec"]
    assert all(p["port"] != 9090 for rule in dropped["egress"] for p in rule["ports"])


def test_networkpolicy_metrics_from_narrows_the_scrapers() -> None:
    policy = one(
        template(extra=["--set-json", 'networkPolicy.metrics.from=[{"namespaceSelector":{"matchLabels":{"a":"b"}}}]']),
        "NetworkPolicy",
    )["spec"]
    assert policy["ingress"][0]["from"] == [{"namespaceSelector": {"matchLabels": {"a": "b"}}}]


def test_switches_turn_parts_off() -> None:
    docs = template(
        {
            "networkPolicy.enabled": "false",
            "podDisruptionBudget.enabled": "false",
            "rbac.create": "false",
            "serviceAccount.create": "false",
            "serviceAccount.name": "mine",
            "admissionPolicy.enabled": "false",
        }
    )
    assert sorted(d["kind"] for d in docs) == ["CustomResourceDefinition", "Deployment", "Secret", "Service"]
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "mine"


def test_an_existing_service_account_needs_its_name() -> None:
    assert "serviceAccount.name is required" in template_error({"serviceAccount.create": "false"})


def test_admission_policy_is_filled_in_for_this_install() -> None:
    digest = "sha256:" + "b" * 64
    docs = template({"sensor.image.digest": digest, "sensor.uid": "4242"}, namespace="guard")
    policy = one(docs, "ValidatingAdmissionPolicy")
    assert policy["spec"]["failurePolicy"] == "Fail"
    text = json.dumps(policy)
    assert "{{" not in text
    assert f"ghcr.io/trainguard/trainguard@{digest}" in text
    assert "runAsUser != 4242" in text  # the workload may not take the sensor's group id as its uid
    is_operator = next(v for v in policy["spec"]["variables"] if v["name"] == "isOperator")
    assert "'system:serviceaccount:guard:tg-trainguard'" in is_operator["expression"]
    binding = one(docs, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert binding["spec"]["matchResources"] == {"namespaceSelector": {}}


def test_admission_binding_follows_the_watched_namespaces() -> None:
    binding = one(template({"operator.watchNamespaces": "{research,ml}"}), "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["matchResources"]["namespaceSelector"] == {
        "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["ml", "research"]}]
    }
    chosen = one(
        template(extra=["--set-json", 'admissionPolicy.namespaceSelector={"matchLabels":{"guarded":"yes"}}']),
        "ValidatingAdmissionPolicyBinding",
    )
    assert chosen["spec"]["matchResources"]["namespaceSelector"] == {"matchLabels": {"guarded": "yes"}}


def test_the_sensor_master_key_is_made_once_kept_and_mounted() -> None:
    """Each job's sensor key is derived from one master key: it must outlive operator restarts and upgrades."""
    docs = template()
    secret = one(docs, "Secret")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert len(secret["data"]["master.key"]) >= 64
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "--sensor-master-key-file=/var/run/secrets/trainguard.io/master/master.key" in container["args"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "sensor-master-key")
    volume = next(v for v in pod["volumes"] if v["name"] == "sensor-master-key")
    assert mount["readOnly"] and volume["secret"]["secretName"] == secret["metadata"]["name"]
