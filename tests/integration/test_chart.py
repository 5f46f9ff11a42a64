"""The Helm chart against the real API server: every rendered manifest passes the server-side dry run (the
prometheus-operator CRDs installed, so ServiceMonitor, PodMonitor and PrometheusRule are checked against their real
schemas), `helm install` and `helm uninstall` work, the CRD is kept, the admission policy refuses what it must, and
the operator's ServiceAccount token may do what the chart grants and nothing it does not.

The last part of issue 15's test (the operator, run as a local process with only this token, reconciling an
AgentTrainingJob to quarantine, and listing unused grants) needs the operator and enforcement code: see
docs/sessions/2026-12-01-chart.md.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests import helm as chart
from tests.integration.conftest import Cluster
from tests.polling import wait_for
from trainguard.api import crdgen, v1alpha1
from trainguard.api.v1alpha1 import SENSOR_CONTAINER
from trainguard.builders import names, workload
from trainguard.builders.settings import BuildSettings, SensorSettings

ROOT = Path(__file__).resolve().parents[2]
MONITORING_CRDS = sorted((ROOT / "tests" / "fixtures" / "crds" / "prometheus-operator-v0.85.0").glob("*.yaml"))
CRD_NAME = "agenttrainingjobs.trainguard.io"
POLICY = "trainguard-guarded-pods"


def _status(call: Callable[[], object]) -> int:
    """HTTP status of an API call: 200 when it succeeds, the error's status otherwise."""
    try:
        call()
    except ApiException as error:
        return int(error.status)
    return 200


def _established(cluster: Cluster, name: str) -> bool:
    crd = cluster.extensions.read_custom_resource_definition(name)
    return any(c.type == "Established" and c.status == "True" for c in (crd.status.conditions or []))


@pytest.fixture(scope="module")
def monitoring(cluster: Cluster) -> Cluster:
    """The session's cluster with prometheus-operator's ServiceMonitor, PodMonitor and PrometheusRule CRDs."""
    assert len(MONITORING_CRDS) == 3, MONITORING_CRDS
    cluster.kubectl("apply", "--server-side", "--field-manager=trainguard-tests", *(f"-f={p}" for p in MONITORING_CRDS))
    for path in MONITORING_CRDS:
        name = yaml.safe_load(path.read_text())["metadata"]["name"]
        wait_for(lambda n=name: _established(cluster, n), 30, f"CRD {name} is not Established")
    return cluster


def _render(path: Path, namespace: str, values: dict[str, str]) -> list[dict[str, Any]]:
    docs = chart.template(values, namespace=namespace)
    path.write_text(yaml.safe_dump_all(docs))
    return docs


@pytest.mark.parametrize(
    "values",
    [{}, {**chart.ALL_ON, "operator.watchNamespaces": "{NS}"}],
    ids=["defaults", "all-on-namespaced"],
)
def test_rendered_manifests_pass_the_server_side_dry_run(
    monitoring: Cluster, namespace: str, tmp_path: Path, values: dict[str, str]
) -> None:
    values = {k: v.replace("NS", namespace) for k, v in values.items()}
    docs = _render(tmp_path / "chart.yaml", namespace, values)
    result = monitoring.kubectl(
        "apply", "--server-side", "--dry-run=server", "--force-conflicts", "--field-manager=trainguard-chart-test",
        f"--filename={tmp_path / 'chart.yaml'}", check=False,
    )
    assert result.returncode == 0, result.stderr
    applied = [line for line in result.stdout.splitlines() if line.endswith("serverside-applied (server dry run)")]
    assert len(applied) == len(docs), result.stdout


@pytest.fixture
def no_admission_policy(cluster: Cluster) -> Iterator[None]:
    """Whatever admission policy named like the chart's exists (another test's) is put back after the test."""
    admission = cluster.admission
    saved = []
    for read, create in (
        (admission.read_validating_admission_policy, admission.create_validating_admission_policy),
        (admission.read_validating_admission_policy_binding, admission.create_validating_admission_policy_binding),
    ):
        try:
            body = cluster.api.sanitize_for_serialization(read(POLICY))
        except ApiException as error:
            assert error.status == 404, error
            continue
        meta = body["metadata"]
        body["metadata"] = {"name": meta["name"], "labels": meta.get("labels"), "annotations": meta.get("annotations")}
        body.pop("status", None)
        saved.append((create, body))
    yield
    for create, body in saved:
        if _status(lambda c=create, b=body: c(b)) not in (200, 201, 409):
            raise AssertionError(f"could not restore {body['kind']} {POLICY}")


def _pod(
    namespace: str, name: str, labels: dict[str, str], host_network: bool = False, sensor: bool = False
) -> dict[str, Any]:
    """A pod; with `sensor`, one that carries the sensor sidecar exactly as the operator's builders make it for the
    chart's default sensor image (security context, key volume, native sidecar), so that the test follows the
    builder instead of restating it."""
    spec: dict[str, Any] = {
        "hostNetwork": host_network,
        "automountServiceAccountToken": False,
        "containers": [{"name": "main", "image": "busybox"}],
    }
    if sensor:
        atj = yaml.safe_load((ROOT / "examples" / "minimal.yaml").read_text())
        atj["metadata"]["name"] = labels.get("trainguard.io/job", atj["metadata"]["name"])
        parsed = v1alpha1.AgentTrainingJob.model_validate(atj)
        image = "ghcr.io/trainguard/trainguard:0.1.0"
        built = workload.pod_template(atj, parsed, BuildSettings(sensor=SensorSettings(image=image)))["spec"]
        spec["initContainers"] = [c for c in built["initContainers"] if c["name"] == SENSOR_CONTAINER]
        spec["volumes"] = [v for v in built["volumes"] if v["name"] == names.SENSOR_KEY_VOLUME]
    metadata = {"name": name, "namespace": namespace, "labels": labels}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def test_chart_installs_enforces_and_uninstalls(
    monitoring: Cluster, namespace: str, no_admission_policy: None
) -> None:
    cluster = monitoring
    release = "tg"
    sa = f"system:serviceaccount:{namespace}:tg-trainguard"
    installed = chart.helm(
        "install", release, str(chart.CHART), "--namespace", namespace, "--take-ownership",
        *chart.set_args(chart.ALL_ON), env=cluster.env(),
    )
    try:
        notes = installed.stdout.split("NOTES:", 1)[1]
        assert f"kubectl -n {namespace} rollout status deployment/tg-trainguard" in notes
        assert "kubectl get atj -w" in notes
        status = yaml.safe_load(chart.helm("status", release, "-n", namespace, "-o", "yaml", env=cluster.env()).stdout)
        assert status["info"]["status"] == "deployed"

        apps = client.AppsV1Api(cluster.api)
        deploy = apps.read_namespaced_deployment("tg-trainguard", namespace)
        assert deploy.spec.template.spec.service_account_name == "tg-trainguard"
        served = cluster.extensions.read_custom_resource_definition(CRD_NAME)
        assert served.metadata.annotations["helm.sh/resource-policy"] == "keep"
        assert served.metadata.annotations["meta.helm.sh/release-namespace"] == namespace
        assert cluster.api.sanitize_for_serialization(served.spec)["versions"] == crdgen.crd()["spec"]["versions"]

        _check_the_admission_policy(cluster, namespace)
        _check_the_service_accounts_grants(cluster, namespace, sa)
    finally:
        chart.helm("uninstall", release, "--namespace", namespace, "--wait", env=cluster.env())
    assert release not in chart.helm("list", "-n", namespace, "-q", env=cluster.env()).stdout.split()
    # crds.keep: the CRD (and with it every AgentTrainingJob) survives the uninstall.
    assert cluster.extensions.read_custom_resource_definition(CRD_NAME)
    assert _status(lambda: cluster.admission.read_validating_admission_policy(POLICY)) == 404
    assert _status(lambda: cluster.rbac.read_cluster_role("tg-trainguard")) == 404


def _check_the_admission_policy(cluster: Cluster, namespace: str) -> None:
    core = cluster.core
    guarded = _pod(namespace, "no-sensor", {"trainguard.io/job": "rome"})

    def refused() -> str | None:
        try:
            core.create_namespaced_pod(namespace, guarded, dry_run="All")
        except ApiException as error:
            # The policy's validations carry reason Forbidden: 403, with the policy's message.
            return str(error.body) if error.status == 403 and POLICY in str(error.body) else None
        return None

    message = wait_for(refused, 30, "the admission policy never refused a guarded pod without its sensor")
    assert "must run the trainguard-sensor native sidecar" in message
    # A guarded pod as the operator builds it is admitted; the same on the host's network is refused, saying why.
    conforming = _pod(namespace, "ok", {"trainguard.io/job": "rome"}, sensor=True)
    core.create_namespaced_pod(namespace, conforming, dry_run="All")
    host = _pod(namespace, "host", {"trainguard.io/job": "rome"}, host_network=True, sensor=True)
    with pytest.raises(ApiException) as caught:
        core.create_namespaced_pod(namespace, host, dry_run="All")
    assert "hostNetwork, hostPID and hostIPC must be false" in str(caught.value.body)
    # A pod that is not guarded is none of the policy's business.
    core.create_namespaced_pod(namespace, _pod(namespace, "plain", {"app": "x"}, host_network=True), dry_run="All")


#: What the chart grants the operator, asked of the API server with the ServiceAccount's own token.
GRANTED = [
    ("list", "", "namespaces", None),
    ("watch", "apiextensions.k8s.io", "customresourcedefinitions", None),
    ("watch", "trainguard.io", "agenttrainingjobs", "*"),
    ("patch", "trainguard.io", "agenttrainingjobs/status", "*"),
    ("create", "batch", "jobs", "*"),
    ("delete", "batch", "jobs", "*"),
    ("patch", "", "pods", "*"),
    ("delete", "", "pods", "*"),
    ("patch", "", "pods/status", "*"),
    ("update", "networking.k8s.io", "networkpolicies", "*"),
    ("create", "", "serviceaccounts", "*"),
    ("create", "", "secrets", "*"),
    ("create", "", "events", "*"),
]
#: What it must not be able to do.
DENIED = [
    ("get", "", "secrets", "*"),
    ("list", "", "secrets", "*"),
    ("delete", "", "serviceaccounts", "*"),
    ("update", "", "pods", "*"),
    ("delete", "trainguard.io", "agenttrainingjobs", "*"),
    ("create", "rbac.authorization.k8s.io", "clusterroles", None),
    ("patch", "admissionregistration.k8s.io", "validatingadmissionpolicies", None),
    ("delete", "admissionregistration.k8s.io", "validatingadmissionpolicybindings", None),
    ("create", "", "pods/exec", "*"),
    ("patch", "", "nodes", None),
]


def _can(api: client.ApiClient, verb: str, group: str, resource: str, namespace: str | None) -> bool:
    resource, _, sub = resource.partition("/")
    attributes = {"verb": verb, "group": group, "resource": resource, "subresource": sub or None}
    if namespace is not None:
        attributes["namespace"] = "" if namespace == "*" else namespace
    review = client.AuthorizationV1Api(api).create_self_subject_access_review(
        {"spec": {"resourceAttributes": attributes}}
    )
    return bool(review.status.allowed)


def _check_the_service_accounts_grants(cluster: Cluster, namespace: str, username: str) -> None:
    token = cluster.core.create_namespaced_service_account_token(
        "tg-trainguard", namespace, {"spec": {"expirationSeconds": 600}}
    ).status.token
    api = cluster.client_for_token(token)
    review = client.AuthenticationV1Api(api).create_self_subject_review({})
    assert review.status.user_info.username == username
    wait_for(lambda: _can(api, "list", "", "pods", "*"), 30, "the ClusterRoleBinding grants nothing")
    assert [g for g in GRANTED if not _can(api, *g)] == []
    assert [d for d in DENIED if _can(api, *d)] == []
    # And a real call each way, with the token.
    core = client.CoreV1Api(api)
    assert _status(lambda: core.list_pod_for_all_namespaces(limit=1)) == 200
    assert _status(lambda: core.list_secret_for_all_namespaces(limit=1)) == 403


def test_chart_lints_against_the_control_planes_version(control_plane: Cluster) -> None:
    version = chart.kube_version()
    out = chart.helm("lint", "--strict", "--kube-version", version, str(chart.CHART), env=control_plane.env())
    assert "1 chart(s) linted, 0 chart(s) failed" in out.stdout, out.stdout


def test_helm_refuses_unknown_values_before_touching_the_cluster(cluster: Cluster, namespace: str) -> None:
    result = subprocess.run(
        [str(chart.helm_bin()), "install", "bad", str(chart.CHART), "-n", namespace, "--set", "operator.replica=1"],
        env=cluster.env(), capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode != 0
    assert "additional properties 'replica' not allowed" in result.stderr
    assert "bad" not in chart.helm("list", "-n", namespace, "-q", env=cluster.env()).stdout.split()
