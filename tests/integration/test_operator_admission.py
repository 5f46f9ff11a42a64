"""The ValidatingAdmissionPolicy on the real API server: each refusal with its message, a conforming pod created
directly is admitted, unlabelled pods are untouched, and only the operator changes trainguard.io/ labels and
conditions. The policy is what `trainguard.builders.admission` builds (what `trainguard run --admission-policy`
applies)."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.integration.conftest import Cluster
from tests.polling import wait_for
from trainguard import builders
from trainguard.builders import admission

ROOT = Path(__file__).resolve().parents[2]
SENSOR = builders.SensorSettings(image="registry.test/trainguard:1.2.3", uid=65532)
_names = itertools.count()


@pytest.fixture
def operator_client(cluster: Cluster, namespace: str) -> client.CoreV1Api:
    """Credentials of a ServiceAccount playing the operator, allowed to patch pods and their status here."""
    core, rbac = cluster.core, cluster.rbac
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "trainguard-operator"}})
    rules = [{"apiGroups": [""], "resources": ["pods", "pods/status"], "verbs": ["get", "patch", "update"]}]
    rbac.create_namespaced_role(namespace, {"metadata": {"name": "operator"}, "rules": rules})
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "operator"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "operator"},
            "subjects": [{"kind": "ServiceAccount", "name": "trainguard-operator", "namespace": namespace}],
        },
    )
    token = core.create_namespaced_service_account_token(
        "trainguard-operator", namespace, {"spec": {"expirationSeconds": 3600}}
    ).status.token
    return client.CoreV1Api(cluster.client_for_token(token))


@pytest.fixture
def policy(cluster: Cluster, namespace: str) -> Iterator[None]:
    operator = f"system:serviceaccount:{namespace}:trainguard-operator"
    documents = [
        admission.validating_admission_policy(SENSOR, [operator]),
        admission.validating_admission_policy_binding([namespace]),
    ]
    cluster.kubectl(
        "apply", "--server-side", "--field-manager=trainguard-tests", "-f", "-", stdin=yaml.safe_dump_all(documents)
    )
    try:
        yield
    finally:
        cluster.kubectl("delete", "validatingadmissionpolicybinding", admission.BINDING_NAME, "--ignore-not-found")
        cluster.kubectl("delete", "validatingadmissionpolicy", admission.POLICY_NAME, "--ignore-not-found")


def conforming_pod(namespace: str, cluster: Cluster) -> dict[str, Any]:
    """A pod exactly as the Job controller would make it from the operator's template."""
    atj: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "minimal.yaml").read_text())
    atj["metadata"].update(namespace=namespace, uid="00000000-0000-0000-0000-000000000001")
    children = builders.build(atj, builders.BuildSettings(sensor=SENSOR))
    sa = copy.deepcopy(children.service_account)
    del sa["metadata"]["ownerReferences"]
    try:
        cluster.core.create_namespaced_service_account(namespace, sa)
    except client.ApiException as error:
        if error.status != 409:
            raise
    template = copy.deepcopy(children.job["spec"]["template"])
    template["metadata"]["name"] = f"pod-{next(_names)}"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": template["metadata"], "spec": template["spec"]}


def refusal(cluster: Cluster, namespace: str, pod: dict[str, Any]) -> str:
    """The API server's message refusing the pod, or '' when it was admitted."""
    try:
        cluster.core.create_namespaced_pod(namespace, pod)
    except client.ApiException as error:
        return str(error.body)
    return ""


def wait_active(cluster: Cluster, namespace: str) -> None:
    def refuses() -> bool:
        pod = conforming_pod(namespace, cluster)
        pod["spec"]["initContainers"] = pod["spec"]["initContainers"][1:]
        return "denied request" in refusal(cluster, namespace, pod)

    wait_for(refuses, 30, "the admission policy never took effect")


def _init(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return pod["spec"]["initContainers"]  # type: ignore[no-any-return]


def _workload(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["spec"]["containers"][0]  # type: ignore[no-any-return]


REFUSED: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
    (
        "no-sensor",
        lambda p: p["spec"].update(initContainers=_init(p)[1:]),
        "must run the trainguard-sensor native sidecar",
    ),
    (
        "sensor-not-a-native-sidecar",
        lambda p: [_init(p)[0].pop(k) for k in ("restartPolicy", "readinessProbe")],
        "must be a native sidecar",
    ),
    (
        "sensor-image-changed",
        lambda p: _init(p)[0].update(image="evil/sensor:1"),
        "must run image registry.test/trainguard:1.2.3",
    ),
    (
        "sensor-gains-a-capability",
        lambda p: _init(p)[0]["securityContext"]["capabilities"]["add"].append("SYS_ADMIN"),
        "must drop ALL capabilities and add only DAC_READ_SEARCH, KILL, NET_ADMIN, SYS_PTRACE",
    ),
    (
        "sensor-may-escalate",
        lambda p: _init(p)[0]["securityContext"].update(allowPrivilegeEscalation=True),
        "must drop ALL capabilities and add only",
    ),
    (
        "workload-mounts-the-sensor-key",
        lambda p: _workload(p).update(
            volumeMounts=[{"name": "trainguard-sensor-key", "mountPath": "/stolen", "readOnly": True}]
        ),
        "only the trainguard-sensor container may mount the trainguard-sensor-key volume",
    ),
    (
        "workload-volume-of-the-key-secret",
        lambda p: p["spec"]["volumes"].append({"name": "steal", "secret": {"secretName": "minimal-sensor-key"}}),
        "a sensor key Secret (*-sensor-key) may only be the trainguard-sensor-key volume",
    ),
    (
        "workload-projects-another-jobs-key",
        lambda p: p["spec"]["volumes"].append(
            {"name": "steal", "projected": {"sources": [{"secret": {"name": "other-sensor-key"}}]}}
        ),
        "a sensor key Secret (*-sensor-key) may only be the trainguard-sensor-key volume",
    ),
    (
        "key-volume-of-another-job",
        lambda p: p["spec"]["volumes"][-1]["secret"].update(secretName="other-sensor-key"),
        "a sensor key Secret (*-sensor-key) may only be the trainguard-sensor-key volume",
    ),
    (
        "workload-env-from-the-key",
        lambda p: _workload(p).update(
            env=[{"name": "K", "valueFrom": {"secretKeyRef": {"name": "minimal-sensor-key", "key": "sensor.key"}}}]
        ),
        "a container's environment may not come from a sensor key Secret",
    ),
    (
        "workload-as-the-sensor-uid",
        lambda p: _workload(p)["securityContext"].update(runAsUser=65532),
        "uid 65532 is the sensor's",
    ),
    ("host-network", lambda p: p["spec"].update(hostNetwork=True), "hostNetwork, hostPID and hostIPC must be false"),
    (
        "host-pid",
        lambda p: p["spec"].update(hostPID=True, shareProcessNamespace=False),
        "hostNetwork, hostPID and hostIPC must be false",
    ),
    ("host-ipc", lambda p: p["spec"].update(hostIPC=True), "hostNetwork, hostPID and hostIPC must be false"),
    (
        "privileged-container",
        lambda p: _workload(p)["securityContext"].update(privileged=True, allowPrivilegeEscalation=True),
        "no container may be privileged",
    ),
    (
        "privileged-sidecar",
        lambda p: _init(p).append(
            {
                "name": "helper",
                "image": "busybox:1.36",
                "restartPolicy": "Always",
                "securityContext": {"privileged": True},
            }
        ),
        "no container may be privileged",
    ),
    (
        "added-capability",
        lambda p: _workload(p)["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
        "capabilities.add may only name",
    ),
    (
        "net-admin-not-kept",
        lambda p: _workload(p)["securityContext"]["capabilities"].update(add=["NET_ADMIN"], drop=[]),
        "capabilities.add may only name",
    ),
    (
        "host-path",
        lambda p: p["spec"]["volumes"].append({"name": "root", "hostPath": {"path": "/"}}),
        "hostPath volumes are not allowed",
    ),
    (
        "token-mounted",
        lambda p: p["spec"].update(automountServiceAccountToken=True),
        "a ServiceAccount token is mounted",
    ),
]


@pytest.mark.parametrize(("change", "message"), [(c, m) for _, c, m in REFUSED], ids=[i for i, _, _ in REFUSED])
def test_each_refusal_says_what_to_change(
    cluster: Cluster, namespace: str, policy: None, change: Callable[[dict[str, Any]], Any], message: str
) -> None:
    wait_active(cluster, namespace)
    pod = conforming_pod(namespace, cluster)
    change(pod)
    said = refusal(cluster, namespace, pod)
    assert "denied request" in said and message in said, said


def test_a_conforming_pod_is_admitted_and_unlabelled_pods_are_untouched(
    cluster: Cluster, namespace: str, policy: None
) -> None:
    wait_active(cluster, namespace)
    assert refusal(cluster, namespace, conforming_pod(namespace, cluster)) == ""
    kept = conforming_pod(namespace, cluster)
    kept["metadata"]["annotations"]["trainguard.io/keep-capabilities"] = "NET_ADMIN"
    _workload(kept)["securityContext"]["capabilities"] = {"add": ["NET_ADMIN"]}
    assert refusal(cluster, namespace, kept) == ""  # kept by the policy: allowed
    anything = {
        "metadata": {"name": "not-guarded", "labels": {"app": "other"}},
        "spec": {
            "hostNetwork": True,
            "containers": [{"name": "c", "image": "busybox:1.36", "securityContext": {"privileged": True}}],
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
        },
    }
    assert refusal(cluster, namespace, anything) == ""


def test_only_the_operator_changes_trainguard_labels_annotations_and_conditions(
    cluster: Cluster, namespace: str, policy: None, operator_client: client.CoreV1Api
) -> None:
    wait_active(cluster, namespace)
    pod = conforming_pod(namespace, cluster)
    name = pod["metadata"]["name"]
    cluster.core.create_namespaced_pod(namespace, pod)
    admin = cluster.core

    def refused(call: Callable[[], Any]) -> str:
        try:
            call()
        except client.ApiException as error:
            return str(error.body)
        return ""

    quarantine = {"metadata": {"labels": {"trainguard.io/quarantined": "true"}}}
    said = refused(lambda: admin.patch_namespaced_pod(name, namespace, quarantine))
    assert "only the trainguard operator may change trainguard.io/* labels" in said, said
    said = refused(
        lambda: admin.patch_namespaced_pod(name, namespace, {"metadata": {"labels": {"trainguard.io/job": None}}})
    )
    assert "only the trainguard operator" in said, said
    said = refused(
        lambda: admin.patch_namespaced_pod(
            name, namespace, {"metadata": {"annotations": {"trainguard.io/policy-hash": "x"}}}
        )
    )
    assert "only the trainguard operator" in said, said
    assert refused(lambda: admin.patch_namespaced_pod(name, namespace, {"metadata": {"labels": {"team": "a"}}})) == ""
    said = refused(
        lambda: admin.patch_namespaced_pod(
            name, namespace, {"spec": {"initContainers": [{"name": "trainguard-sensor", "image": "evil/sensor:1"}]}}
        )
    )
    assert "must run image" in said, said

    condition = [
        {"op": "add", "path": "/status/conditions", "value": [{"type": "trainguard.io/Quarantined", "status": "True"}]}
    ]
    said = refused(lambda: admin.patch_namespaced_pod_status(name, namespace, condition))
    assert "only the trainguard operator may change trainguard.io/* conditions" in said, said

    assert refused(lambda: operator_client.patch_namespaced_pod(name, namespace, quarantine)) == ""
    assert refused(lambda: operator_client.patch_namespaced_pod_status(name, namespace, condition)) == ""
    after = admin.read_namespaced_pod(name, namespace)
    assert after.metadata.labels["trainguard.io/quarantined"] == "true"
    assert any(c.type == "trainguard.io/Quarantined" for c in after.status.conditions)


def test_a_privileged_ephemeral_container_is_refused(cluster: Cluster, namespace: str, policy: None) -> None:
    wait_active(cluster, namespace)
    pod = conforming_pod(namespace, cluster)
    name = pod["metadata"]["name"]
    cluster.core.create_namespaced_pod(namespace, pod)
    debug = {
        "spec": {
            "ephemeralContainers": [{"name": "debug", "image": "busybox:1.36", "securityContext": {"privileged": True}}]
        }
    }
    with pytest.raises(client.ApiException) as refused:
        cluster.core.patch_namespaced_pod_ephemeralcontainers(name, namespace, debug)
    assert "no container may be privileged" in str(refused.value.body)
