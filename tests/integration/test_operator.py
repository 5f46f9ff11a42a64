"""The operator on the real control plane: an AgentTrainingJob in, a guarded Job out, drift reverted, bad input
reported, deletion cleaned up. The operator runs as `trainguard run` in its own process; pods are "run" by the
fake kubelet (tests/integration/kubelet.py), which a KWOK node tier can replace."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.integration import kubelet
from tests.integration.conftest import Cluster
from tests.integration.freezing_proxy import freezing_proxy
from tests.integration.running_operator import ATJ, RunningOperator, run_operator
from tests.polling import wait_for

ROOT = Path(__file__).resolve().parents[2]
JOB_LABEL = "trainguard.io/job"


def example(path: str = "rome-lockdown.yaml", **metadata: Any) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((ROOT / "examples" / path).read_text())
    body["metadata"] = {**{k: v for k, v in body["metadata"].items() if k != "namespace"}, **metadata}
    return body


def create(cluster: Cluster, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = cluster.custom.create_namespaced_custom_object(*ATJ[:2], namespace, ATJ[2], body)
    return out


def get(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    out: dict[str, Any] = cluster.custom.get_namespaced_custom_object(*ATJ[:2], namespace, ATJ[2], name)
    return out


def condition(atj: dict[str, Any], kind: str) -> dict[str, Any]:
    for c in (atj.get("status") or {}).get("conditions") or []:
        if c["type"] == kind:
            return dict(c)
    return {}


def ready(cluster: Cluster, namespace: str, name: str, status: str = "True") -> dict[str, Any] | None:
    atj = get(cluster, namespace, name)
    c = condition(atj, "Ready")
    ok = c.get("status") == status and c.get("observedGeneration") == atj["metadata"]["generation"]
    return atj if ok else None


def events(cluster: Cluster, namespace: str, name: str, reason: str | None = None) -> list[client.CoreV1Event]:
    found = cluster.core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
    return [e for e in found if e.type == "Warning" and (reason is None or e.reason == reason)]


def reconciled(running: RunningOperator) -> float:
    """trainguard_reconciles_total{outcome="reconciled"} of a running operator."""
    for line in running.metrics().splitlines():
        if line.startswith('trainguard_reconciles_total{outcome="reconciled"}'):
            return float(line.split()[-1])
    return 0.0


@pytest.fixture
def operator(cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[RunningOperator]:
    # Issue 12's reconcile alone: these pods' sensors never stream, and the guard (issue 13, tested in
    # test_enforcement.py) would rightly record them as sensor.silent, changing the status these tests watch.
    with run_operator(cluster, namespace, tmp_path, "--no-guard") as running:
        yield running


@pytest.fixture
def guarding_operator(cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[RunningOperator]:
    """The operator that also applies the admission policy for its namespace (as its own identity)."""
    try:
        with run_operator(cluster, namespace, tmp_path, "--admission-policy", "--no-guard") as running:
            yield running
    finally:
        cluster.kubectl("delete", "validatingadmissionpolicybinding", "trainguard-guarded-pods", "--ignore-not-found")
        cluster.kubectl("delete", "validatingadmissionpolicy", "trainguard-guarded-pods", "--ignore-not-found")


def test_a_job_gets_its_guarded_children_and_a_real_status(
    cluster: Cluster, namespace: str, guarding_operator: RunningOperator
) -> None:
    operator = guarding_operator
    binding = cluster.admission.read_validating_admission_policy_binding("trainguard-guarded-pods")
    assert binding.spec.match_resources.namespace_selector.match_expressions[0].values == [namespace]
    create(cluster, namespace, example())
    atj = wait_for(lambda: ready(cluster, namespace, "rome-lockdown"), 30, "rome-lockdown never became Ready")
    sa = cluster.core.read_namespaced_service_account("rome-lockdown-workload", namespace)
    assert sa.automount_service_account_token is False
    job = cluster.batch.read_namespaced_job("rome-lockdown", namespace)
    assert (job.spec.completion_mode, job.spec.completions, job.spec.parallelism) == ("Indexed", 2, 2)
    assert job.spec.pod_replacement_policy == "Failed"
    rule = job.spec.pod_failure_policy.rules[0]
    assert rule.action == "FailIndex" and rule.on_pod_conditions[0].type == "trainguard.io/Quarantined"
    assert job.metadata.managed_fields[0].manager == "trainguard"
    assert job.metadata.owner_references[0].uid == atj["metadata"]["uid"]
    template = job.spec.template
    assert template.metadata.labels[JOB_LABEL] == "rome-lockdown"
    assert (
        template.metadata.annotations["trainguard.io/policy-hash"]
        == job.metadata.annotations["trainguard.io/policy-hash"]
    )
    sensor = template.spec.init_containers[0]
    assert (sensor.name, sensor.restart_policy) == ("trainguard-sensor", "Always")
    assert template.spec.share_process_namespace is True and template.spec.restart_policy == "Never"
    assert template.spec.containers[0].security_context.allow_privilege_escalation is False
    policies = {
        p.metadata.name for p in client.NetworkingV1Api(cluster.api).list_namespaced_network_policy(namespace).items
    }
    assert {f"rome-lockdown-{p}" for p in ("default-deny", "dns", "intra-job", "egress", "sensor")} <= policies

    # kopf keeps its state in trainguard.io/ annotations, never in status
    assert any(k.startswith("trainguard.io/") for k in atj["metadata"]["annotations"])
    assert set(atj["status"]) <= {
        "phase",
        "conditions",
        "observedGeneration",
        "replicas",
        "monitoredPods",
        "quarantinedPods",
        "violations",
        "violationCount",
        "lastViolationTime",
    }

    # pods run (fake kubelet): the status follows, every printer column is real
    def two_pods() -> list[str] | None:
        found = cluster.core.list_namespaced_pod(namespace, label_selector=f"{JOB_LABEL}=rome-lockdown").items
        return [p.metadata.name for p in found] if len(found) == 2 else None

    pods = wait_for(two_pods, 30, "the Job controller made no 2 pods (the admission policy admits its pods)")
    for pod in pods:
        kubelet.run_pod(cluster.core, pod, namespace)

    def running() -> dict[str, Any] | None:
        a = get(cluster, namespace, "rome-lockdown")
        s = a.get("status") or {}
        return a if s.get("phase") == "Running" and s.get("monitoredPods") == 2 else None

    atj = wait_for(running, 30, "status never showed 2 running, monitored pods")
    assert condition(atj, "Enforcing")["status"] == "True"
    assert condition(atj, "Violating")["status"] == "False"
    assert condition(atj, "Degraded")["status"] == "False"
    row = cluster.kubectl("get", "atj", "-n", namespace, "rome-lockdown", "--no-headers").stdout.split()
    assert row[:5] == ["rome-lockdown", "Running", "2", "2", "0"], row

    # the sensor restarted (killed by the workload): the API server's restart count degrades the job
    pod = cluster.core.read_namespaced_pod(pods[0], namespace)
    statuses = [cluster.api.sanitize_for_serialization(s) for s in pod.status.init_container_statuses]
    statuses[0]["restartCount"] = 1
    cluster.core.patch_namespaced_pod_status(pods[0], namespace, {"status": {"initContainerStatuses": statuses}})

    def degraded() -> dict[str, Any] | None:
        c = condition(get(cluster, namespace, "rome-lockdown"), "Degraded")
        return c if c.get("reason") == "SensorRestarted" else None

    assert pods[0] in wait_for(degraded, 20, "a sensor restart did not degrade the job")["message"]

    # the status is patched only when it changes: more reconciles (resync every 5 s), the same object
    before = get(cluster, namespace, "rome-lockdown")["metadata"]["resourceVersion"]
    count = reconciled(operator)
    wait_for(lambda: reconciled(operator) >= count + 2, 30, "no resync reconciles")
    assert get(cluster, namespace, "rome-lockdown")["metadata"]["resourceVersion"] == before

    # /metrics and structured logs
    text = operator.metrics()
    assert 'trainguard_reconciles_total{outcome="reconciled"}' in text
    assert "trainguard_reconcile_duration_seconds_bucket" in text
    assert "trainguard_watched_jobs 1.0" in text
    assert 'trainguard_build_info{version="' in text
    lines = operator.log_lines()
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)


def test_drift_is_reverted(cluster: Cluster, namespace: str, operator: RunningOperator) -> None:
    create(cluster, namespace, example())
    wait_for(lambda: ready(cluster, namespace, "rome-lockdown"), 30, "never Ready")
    net = client.NetworkingV1Api(cluster.api)
    net.delete_namespaced_network_policy("rome-lockdown-egress", namespace)
    net.patch_namespaced_network_policy(
        "rome-lockdown-dns", namespace, {"spec": {"podSelector": {"matchLabels": {"someone": "else"}}}}
    )
    net.patch_namespaced_network_policy(
        "rome-lockdown-default-deny",
        namespace,
        {"spec": {"ingress": [{}]}},  # an allow-all inside the deny
    )

    def policies_restored() -> bool:
        try:
            egress = net.read_namespaced_network_policy("rome-lockdown-egress", namespace)
        except client.ApiException:
            return False
        dns = net.read_namespaced_network_policy("rome-lockdown-dns", namespace)
        deny = net.read_namespaced_network_policy("rome-lockdown-default-deny", namespace)
        return (
            egress.spec.egress[0].to[0].ip_block.cidr == "198.51.100.0/24"
            and dns.spec.pod_selector.match_labels == {JOB_LABEL: "rome-lockdown"}
            and not deny.spec.ingress
        )

    wait_for(policies_restored, 20, "the NetworkPolicies were not restored")

    # The Job's pod template (its sensor) is immutable: the API server refuses an edit ...
    job = cluster.batch.read_namespaced_job("rome-lockdown", namespace)
    without_sensor = [{"op": "remove", "path": "/spec/template/spec/initContainers/0"}]
    with pytest.raises(client.ApiException) as refused:
        cluster.batch.patch_namespaced_job("rome-lockdown", namespace, without_sensor)
    assert "immutable" in str(refused.value.body)
    # ... so a Job without the sensor can only come by deleting it: the operator makes it again, sensor included
    cluster.batch.delete_namespaced_job("rome-lockdown", namespace, propagation_policy="Background")

    def job_back() -> bool:
        try:
            again = cluster.batch.read_namespaced_job("rome-lockdown", namespace)
        except client.ApiException:
            return False
        sensor = again.spec.template.spec.init_containers[0]
        return again.metadata.uid != job.metadata.uid and sensor.name == "trainguard-sensor"

    wait_for(job_back, 30, "the Job was not made again")
    cluster.core.delete_namespaced_service_account("rome-lockdown-workload", namespace)
    wait_for(
        lambda: cluster.core.read_namespaced_service_account("rome-lockdown-workload", namespace),
        20,
        "the ServiceAccount was not made again",
        ignoring=(client.ApiException,),
    )


def test_a_foreign_network_policy_is_a_warning(cluster: Cluster, namespace: str, operator: RunningOperator) -> None:
    create(cluster, namespace, example())
    wait_for(lambda: ready(cluster, namespace, "rome-lockdown"), 30, "never Ready")
    client.NetworkingV1Api(cluster.api).create_namespaced_network_policy(
        namespace,
        {
            "metadata": {"name": "allow-everything"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{}]},
        },
    )

    def degraded() -> dict[str, Any] | None:
        c = condition(get(cluster, namespace, "rome-lockdown"), "Degraded")
        return c if c.get("status") == "True" else None

    c = wait_for(degraded, 20, "Degraded never became True")
    assert c["reason"] == "ForeignNetworkPolicy" and "allow-everything" in c["message"]
    wait_for(lambda: events(cluster, namespace, "rome-lockdown", "ForeignNetworkPolicy"), 10, "no Warning Event")


@pytest.mark.parametrize(
    ("change", "reason", "message"),
    [
        (
            lambda b: b["spec"]["template"]["spec"]["containers"][0].update(imagePullPolicy="Sometimes"),
            "JobRefused",
            "imagePullPolicy",
        ),
        (
            lambda b: b["spec"]["template"]["spec"]["containers"][0].update(comand=["python"]),
            "JobRefused",
            '.spec.template.spec.containers[name="trainer"].comand: field not declared in schema',
        ),
        (lambda b: b["metadata"].update(name="x" * 64), "ServiceAccountRefused", "63"),
    ],
    ids=["template-the-api-refuses", "typo-strict-field-validation", "name-too-long-for-its-children"],
)
def test_bad_input_is_reported_and_does_not_stop_other_jobs(  # noqa: PLR0917
    cluster: Cluster, namespace: str, operator: RunningOperator, change: Any, reason: str, message: str
) -> None:
    bad = example("minimal.yaml", name="broken")
    change(bad)
    name = bad["metadata"]["name"]
    create(cluster, namespace, bad)
    create(cluster, namespace, example("minimal.yaml", name="healthy"))
    atj = wait_for(lambda: ready(cluster, namespace, name, "False"), 30, f"{name} never got Ready=False")
    c = condition(atj, "Ready")
    assert c["reason"] == reason and message in c["message"], c
    wait_for(lambda: events(cluster, namespace, name, reason), 10, "no Warning Event")
    wait_for(lambda: ready(cluster, namespace, "healthy"), 30, "the healthy job was held up by the broken one")
    about = [line for line in operator.log_lines() if line["message"].startswith("not reconciled")]
    assert about and all(line["job"] == f"{namespace}/{name}" for line in about)  # JSON logs name the job
    if len(name) <= 63:  # fix the spec: it recovers
        fixed = example("minimal.yaml")["spec"]["template"]
        cluster.custom.patch_namespaced_custom_object(*ATJ[:2], namespace, ATJ[2], name, {"spec": {"template": fixed}})
        wait_for(lambda: ready(cluster, namespace, name), 30, f"{name} did not recover once fixed")
        cluster.batch.read_namespaced_job(name, namespace)


def test_deletion_releases_pods_that_outlive_the_job(
    cluster: Cluster, namespace: str, operator: RunningOperator
) -> None:
    create(cluster, namespace, example("minimal.yaml"))
    wait_for(lambda: ready(cluster, namespace, "minimal"), 30, "never Ready")
    # a pod of the job that is not owned by its Job (adopted from elsewhere, or orphaned), quarantined
    pod = cluster.core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "survivor", "labels": {JOB_LABEL: "minimal", "trainguard.io/quarantined": "true"}},
            "spec": {"containers": [{"name": "c", "image": "python:3.11-slim"}]},
        },
    )
    status = copy.deepcopy(kubelet.run_pod(cluster.core, pod.metadata.name, namespace).status.to_dict())
    cluster.core.patch_namespaced_pod_status(
        "survivor",
        namespace,
        [
            {
                "op": "add",
                "path": "/status/conditions/-",
                "value": {"type": "trainguard.io/Quarantined", "status": "True"},
            }
        ],
    )
    assert status
    cluster.custom.delete_namespaced_custom_object(*ATJ[:2], namespace, ATJ[2], "minimal")
    wait_for(
        lambda: not cluster.custom.list_namespaced_custom_object(*ATJ[:2], namespace, ATJ[2])["items"],
        30,
        "the AgentTrainingJob was not deleted",
    )
    survivor = cluster.core.read_namespaced_pod("survivor", namespace)
    assert "trainguard.io/quarantined" not in (survivor.metadata.labels or {})
    assert all(c.type != "trainguard.io/Quarantined" for c in survivor.status.conditions or [])


def test_a_watch_that_stops_answering_is_reopened(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    """Every connection the operator has open stops delivering, without closing. With an inactivity timeout of
    3 s the watches are reopened (new connections work) and a job created after the freeze is reconciled; with
    kopf's old behaviour (no inactivity timeout) the operator would stay blind until the 10-minute watch limit.

    The guard (enforcement) is off here, as in the other reconcile tests: with it on, this test failed at high load
    (three times in about ten runs, not reproduced since: docs/sessions/2026-12-02-dcgm.md); the guard's own recovery
    from dropped watches and stalls is tested through the fault-injecting proxy in test_enforcement.py.
    `TRAINGUARD_TEST_WITH_GUARD=1` runs it with the guard on."""
    with (
        freezing_proxy(cluster.kubeconfig, tmp_path) as (proxy, kubeconfig),
        run_operator(
            cluster,
            namespace,
            tmp_path,
            "--watch-inactivity-timeout=3",
            "--watch-server-timeout=600",
            "--watch-client-timeout=600",
            "--request-timeout=5",
            "--resync=600",
            # kopf logs its retries, watch reconnects and its own patches at debug: a failure's log says where it
            # stalled (once, 85 s of nothing after kopf's PATCH of the new job's finalizer failed: docs/notes.md).
            "--log-level=DEBUG",
            *(() if os.environ.get("TRAINGUARD_TEST_WITH_GUARD") else ("--no-guard",)),
            kubeconfig=kubeconfig,
        ),
    ):
        create(cluster, namespace, example("minimal.yaml", name="before"))
        wait_for(lambda: ready(cluster, namespace, "before"), 30, "the first job was not reconciled")
        assert proxy.freeze() > 0
        create(cluster, namespace, example("minimal.yaml", name="after"))
        wait_for(
            lambda: ready(cluster, namespace, "after"),
            90,
            f"a job created after the freeze was never seen; the operator's log: {tmp_path / 'operator.log'}",
        )


def test_two_replicas_with_distinct_priorities_one_acts(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    """kopf peering: of two replicas with distinct priorities, the higher serves and the lower pauses."""
    cluster.kubectl(
        "apply", "--server-side", "--field-manager=trainguard-tests", f"-f={ROOT / 'deploy' / 'kopf-peering.yaml'}"
    )
    wait_for(
        lambda: (
            "Established=True"
            in cluster.kubectl(
                "get",
                "crd",
                "kopfpeerings.kopf.dev",
                "-o",
                "jsonpath={range .status.conditions[*]}{.type}={.status} {end}",
            ).stdout
        ),
        30,
        "the peering CRD is not Established",
    )
    cluster.custom.create_namespaced_custom_object(
        "kopf.dev",
        "v1",
        namespace,
        "kopfpeerings",
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "trainguard"}},
    )
    (tmp_path / "low").mkdir()
    (tmp_path / "high").mkdir()
    with (
        run_operator(cluster, namespace, tmp_path / "low", "--peering=trainguard", "--priority=10") as low,
        run_operator(cluster, namespace, tmp_path / "high", "--peering=trainguard", "--priority=20") as high,
    ):
        wait_for(
            lambda: any("Pausing" in line.get("message", "") for line in low.log_lines()),
            30,
            "the lower-priority replica did not pause",
        )
        create(cluster, namespace, example("minimal.yaml", name="peered"))
        wait_for(lambda: ready(cluster, namespace, "peered"), 30, "nobody reconciled the job")
        # The counter moves after the status patch that made the job Ready has returned: wait for it.
        wait_for(lambda: reconciled(high) > 0, 10, "the higher-priority replica counted no reconcile")
        assert reconciled(low) == 0


def test_a_quarantined_pod_fails_its_index_and_is_not_replaced(
    cluster: Cluster, namespace: str, operator: RunningOperator
) -> None:
    """The Job controller answers a pod that failed with trainguard.io/Quarantined by failing its index, never with
    a fresh copy; an ordinary failure of the other index is retried (backoffLimitPerIndex)."""
    body = example("minimal.yaml")
    body["spec"]["replicas"] = 2
    create(cluster, namespace, body)
    wait_for(lambda: ready(cluster, namespace, "minimal"), 30, "never Ready")

    def pods_by_index() -> dict[str, list[client.V1Pod]]:
        out: dict[str, list[client.V1Pod]] = {}
        for p in cluster.core.list_namespaced_pod(namespace, label_selector=f"{JOB_LABEL}=minimal").items:
            out.setdefault(p.metadata.annotations["batch.kubernetes.io/job-completion-index"], []).append(p)
        return out

    def two_indexes() -> dict[str, list[client.V1Pod]] | None:
        found = pods_by_index()
        return found if len(found) == 2 else None

    first = wait_for(two_indexes, 30, "the Job controller made no pod for each index")
    for pods in first.values():
        kubelet.run_pod(cluster.core, pods[0].metadata.name, namespace)
    quarantined, ordinary = first["0"][0].metadata.name, first["1"][0].metadata.name
    cluster.core.patch_namespaced_pod_status(
        quarantined,
        namespace,
        {"status": {"conditions": [{"type": "trainguard.io/Quarantined", "status": "True", "reason": "Tunnel"}]}},
    )
    kubelet.finish_pod(cluster.core, quarantined, namespace, exit_code=137)
    kubelet.finish_pod(cluster.core, ordinary, namespace, exit_code=1)

    def failed_index_zero() -> bool:
        return cluster.batch.read_namespaced_job("minimal", namespace).status.failed_indexes == "0"

    wait_for(failed_index_zero, 30, "index 0 was not failed by the podFailurePolicy")
    wait_for(lambda: len(pods_by_index()["1"]) == 2, 30, "the ordinary failure of index 1 was not retried")
    assert [p.metadata.name for p in pods_by_index()["0"]] == [quarantined]  # no fresh copy of the attack
