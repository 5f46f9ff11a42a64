"""KWOK nodes: the real scheduler places pods on them, kwok runs them with the stages of controlplane/kwok/stages.yaml.

Each test would fail with kwok's stock stages (Job pods completed at once, no Failed phase on deletion) or without
the scheduler, node-lifecycle and node-ipam controllers (pods Pending, no podCIDR, nodes tainted not-ready).
"""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import sys
import urllib.request
from typing import Any

from kubernetes import client, watch

from tests.integration import kwok
from tests.integration.conftest import KwokCluster
from tests.polling import wait_for


def _job(name: str, parallelism: int = 2, sidecar: bool = True, **spec: Any) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [{"name": "trainer", "image": "trainer:dev", "command": ["python", "train.py"]}],
    }
    if sidecar:
        pod["initContainers"] = [
            {"name": "prepare", "image": "busybox", "command": ["true"]},
            {"name": "sensor", "image": "trainguard:dev", "restartPolicy": "Always"},
        ]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"parallelism": parallelism, "completions": parallelism, "template": {"spec": pod}, **spec},
    }


def _pods(cluster: KwokCluster, namespace: str, job: str) -> list[Any]:
    pods: list[Any] = cluster.core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items
    return pods


def _running(cluster: KwokCluster, namespace: str, job: str, count: int) -> list[Any] | None:
    pods = _pods(cluster, namespace, job)
    running = [p for p in pods if p.status.phase == "Running" and p.status.pod_ip]
    return running if len(running) == count else None


def test_nodes_are_ready_with_loopback_pod_cidrs(kwok_cluster: KwokCluster) -> None:
    assert kwok_cluster.nodes is not None
    networks = [ipaddress.ip_network(cidr) for cidr in kwok_cluster.nodes.values()]
    for network in networks:
        assert network.prefixlen == 16
        assert network.subnet_of(ipaddress.ip_network("127.0.0.0/8"))
        assert not network.overlaps(ipaddress.ip_network("127.0.0.0/16")), "127.0.0.1 would be a pod IP"
    assert len(set(networks)) == len(networks), f"two nodes share a podCIDR: {kwok_cluster.nodes}"
    for node in kwok_cluster.core.list_node(label_selector="type=kwok").items:
        assert not node.spec.taints, f"{node.metadata.name} still tainted: {node.spec.taints}"
        lease = client.CoordinationV1Api(kwok_cluster.api).read_namespaced_lease(node.metadata.name, "kube-node-lease")
        # kwok renews one lease per node (holder: kwok's own identity), so node-lifecycle keeps the node Ready.
        assert lease.spec.lease_duration_seconds == 40 and lease.spec.renew_time is not None


def test_scheduled_job_pods_run_with_pod_ips_and_stay_running(kwok_cluster: KwokCluster, kwok_namespace: str) -> None:
    kwok_cluster.batch.create_namespaced_job(kwok_namespace, _job("train", parallelism=3))
    pods = wait_for(lambda: _running(kwok_cluster, kwok_namespace, "train", 3), 30, "3 Job pods Running with an IP")
    assert kwok_cluster.nodes is not None
    for pod in pods:
        node = pod.spec.node_name
        assert node in kwok_cluster.nodes, f"{pod.metadata.name} bound to {node}, not a KWOK node"
        assert ipaddress.ip_address(pod.status.pod_ip) in ipaddress.ip_network(kwok_cluster.nodes[node])
        scheduled = next(c for c in pod.status.conditions if c.type == "PodScheduled")
        assert scheduled.status == "True", "the scheduler's PodScheduled condition was overwritten"
    assert len({p.status.pod_ip for p in pods}) == 3
    # kwok's stock stages would have completed the Job by now. A bare pod created after the Job and seen Running
    # proves kwok has handled later events; the Job's pods must still be Running and the Job unfinished.
    kwok_cluster.core.create_namespaced_pod(
        kwok_namespace, {"metadata": {"name": "later"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
    )
    wait_for(
        lambda: kwok_cluster.core.read_namespaced_pod("later", kwok_namespace).status.phase == "Running",
        30,
        "the later pod Running",
    )
    assert _running(kwok_cluster, kwok_namespace, "train", 3), "Job pods no longer all Running"
    job = kwok_cluster.batch.read_namespaced_job("train", kwok_namespace)
    assert (job.status.active, job.status.succeeded or 0) == (3, 0)


def test_native_sidecar_started_ready_and_init_container_completed(
    kwok_cluster: KwokCluster, kwok_namespace: str
) -> None:
    kwok_cluster.batch.create_namespaced_job(kwok_namespace, _job("sidecar", parallelism=1))
    (pod,) = wait_for(lambda: _running(kwok_cluster, kwok_namespace, "sidecar", 1), 30, "the Job pod Running")
    init = {s.name: s for s in pod.status.init_container_statuses}
    assert init["sensor"].started and init["sensor"].ready and init["sensor"].state.running
    assert init["prepare"].state.terminated.reason == "Completed" and not init["prepare"].started
    (trainer,) = pod.status.container_statuses
    assert trainer.ready and trainer.state.running
    ready = {c.type: c.status for c in pod.status.conditions}
    assert ready["Ready"] == ready["ContainersReady"] == ready["Initialized"] == "True"


def test_exit_code_annotation_ends_pods_and_completes_the_job(kwok_cluster: KwokCluster, kwok_namespace: str) -> None:
    kwok_cluster.batch.create_namespaced_job(kwok_namespace, _job("done", parallelism=2))
    pods = wait_for(lambda: _running(kwok_cluster, kwok_namespace, "done", 2), 30, "2 Job pods Running")
    for pod in pods:
        kwok.end_pod(kwok_cluster.core, pod.metadata.name, kwok_namespace, exit_code=0)

    def complete() -> bool:
        job = kwok_cluster.batch.read_namespaced_job("done", kwok_namespace)
        return any(c.type == "Complete" and c.status == "True" for c in job.status.conditions or [])

    wait_for(complete, 30, "the Job Complete after its pods exited 0")
    for pod in _pods(kwok_cluster, kwok_namespace, "done"):
        assert pod.status.phase == "Succeeded"
        statuses = pod.status.container_statuses + pod.status.init_container_statuses
        assert all(s.state.terminated and s.state.terminated.exit_code == 0 for s in statuses), statuses


def test_deleted_pod_goes_through_failed_and_pod_failure_policy_sees_its_condition(
    kwok_cluster: KwokCluster, kwok_namespace: str
) -> None:
    policy = {
        "podReplacementPolicy": "Failed",
        "backoffLimit": 6,
        "podFailurePolicy": {
            "rules": [{"action": "FailJob", "onPodConditions": [{"type": "trainguard.io/Quarantined"}]}]
        },
    }
    kwok_cluster.batch.create_namespaced_job(kwok_namespace, _job("quarantine", parallelism=2, **policy))
    victim, _ = wait_for(lambda: _running(kwok_cluster, kwok_namespace, "quarantine", 2), 30, "2 Job pods Running")
    name = victim.metadata.name
    condition = {"type": "trainguard.io/Quarantined", "status": "True", "reason": "Test", "message": "by the test"}
    kwok_cluster.core.patch_namespaced_pod_status(name, kwok_namespace, {"status": {"conditions": [condition]}})

    seen: list[dict[str, Any]] = []
    stream = watch.Watch()
    version = kwok_cluster.core.read_namespaced_pod(name, kwok_namespace).metadata.resource_version
    kwok_cluster.core.delete_namespaced_pod(name, kwok_namespace)
    for event in stream.stream(
        kwok_cluster.core.list_namespaced_pod,
        kwok_namespace,
        field_selector=f"metadata.name={name}",
        resource_version=version,
        timeout_seconds=30,
    ):
        pod = event["object"]
        seen.append({"type": event["type"], "phase": pod.status.phase, "pod": pod})
        if event["type"] == "DELETED":
            stream.stop()
    assert seen and seen[-1]["type"] == "DELETED", f"pod not deleted within 30 s: {[s['phase'] for s in seen]}"
    failed = [s["pod"] for s in seen if s["phase"] == "Failed"]
    assert failed, f"the deleted pod never went through Failed: {[(s['type'], s['phase']) for s in seen]}"
    last = failed[-1]
    for status in last.status.container_statuses:
        assert status.state.terminated and status.state.terminated.exit_code == 143, status
    sidecar = next(s for s in last.status.init_container_statuses if s.name == "sensor")
    assert sidecar.state.terminated, "the native sidecar still running on a Failed pod"
    kept = [c for c in last.status.conditions if c.type == "trainguard.io/Quarantined"]
    assert kept and kept[0].status == "True", "kwok's status patch dropped the operator's condition"

    def failed_by_policy() -> str | None:
        job = kwok_cluster.batch.read_namespaced_job("quarantine", kwok_namespace)
        for c in job.status.conditions or []:
            if c.type == "Failed" and c.status == "True":
                return str(c.reason)
        return None

    reason = wait_for(failed_by_policy, 30, "the Job Failed by its podFailurePolicy")
    assert reason == "PodFailurePolicy"


def test_a_local_sensor_bound_to_a_pod_ip_is_reachable(kwok_cluster: KwokCluster, kwok_namespace: str) -> None:
    """A trainguard sensor bound to the pod's 127.x address on port 9400 plays that pod's sensor."""
    kwok_cluster.batch.create_namespaced_job(kwok_namespace, _job("sensed", parallelism=1))
    (pod,) = wait_for(lambda: _running(kwok_cluster, kwok_namespace, "sensed", 1), 30, "the Job pod Running")
    ip = pod.status.pod_ip
    sensor = subprocess.Popen(
        [
            sys.executable, "-m", "trainguard", "sensor", "--address", ip, "--port", "9400",
            "--gpu-source", "none", "--interval", "0.2", "--pod", f"{kwok_namespace}/{pod.metadata.name}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:

        def sample() -> dict[str, Any]:
            assert sensor.poll() is None, f"the sensor exited: {sensor.stderr.read().decode() if sensor.stderr else ''}"
            with urllib.request.urlopen(f"http://{ip}:9400/v1/sample", timeout=2) as response:
                body: dict[str, Any] = json.loads(response.read())
                return body

        body = wait_for(sample, 30, f"the sensor on {ip}:9400", ignoring=(OSError,))
        assert json.dumps(body).count(pod.metadata.name) >= 1, body
        with socket.create_connection((ip, 9400), timeout=2) as conn:
            assert conn.getpeername() == (ip, 9400)
    finally:
        sensor.terminate()
        sensor.wait(10)
