"""The controller-manager is real: Jobs make Pods, and deleting the owner garbage-collects them."""

from __future__ import annotations

from typing import Any

from kubernetes import client

from tests.integration import kubelet
from tests.integration.conftest import Cluster
from tests.polling import wait_for


def job_body(name: str, parallelism: int = 1, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "parallelism": parallelism,
            "completions": parallelism,
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": labels or {}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "trainer", "image": "python:3.11-slim", "command": ["true"]}],
                },
            },
        },
    }


def job_pods(control_plane: Cluster, namespace: str, job: str) -> list[client.V1Pod]:
    pods: list[client.V1Pod] = control_plane.core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items
    return pods


def test_job_makes_pods_and_gc_deletes_them(control_plane: Cluster, namespace: str) -> None:
    job = control_plane.batch.create_namespaced_job(namespace, job_body("train", parallelism=2))

    wait_for(lambda: len(job_pods(control_plane, namespace, "train")) == 2, 30, "the job controller made no 2 pods")
    for pod in job_pods(control_plane, namespace, "train"):
        owners = pod.metadata.owner_references
        assert [(o.kind, o.name, o.uid, o.controller) for o in owners] == [("Job", "train", job.metadata.uid, True)]

    control_plane.batch.delete_namespaced_job("train", namespace, propagation_policy="Background")
    wait_for(lambda: not job_pods(control_plane, namespace, "train"), 30, "the garbage collector left the job's pods")


def test_job_completes_when_the_kubelet_reports_success(control_plane: Cluster, namespace: str) -> None:
    control_plane.batch.create_namespaced_job(namespace, job_body("once"))
    pod = wait_for(lambda: job_pods(control_plane, namespace, "once"), 30, "the job controller made no pod")[0]

    running = kubelet.run_pod(control_plane.core, pod.metadata.name, namespace)
    assert running.status.phase == "Running" and running.status.pod_ip
    assert all(s.ready and s.started for s in running.status.container_statuses)
    kubelet.finish_pod(control_plane.core, pod.metadata.name, namespace, exit_code=0)

    def complete() -> bool:
        status = control_plane.batch.read_namespaced_job_status("once", namespace).status
        return any(c.type == "Complete" and c.status == "True" for c in status.conditions or [])

    wait_for(complete, 30, "the job is not Complete after its pod succeeded")


def test_native_sidecar_reported_started_and_ready(control_plane: Cluster, namespace: str) -> None:
    body = job_body("sidecar")
    body["spec"]["template"]["spec"]["initContainers"] = [
        {"name": "sensor", "image": "busybox", "restartPolicy": "Always", "command": ["sleep", "infinity"]},
        {"name": "setup", "image": "busybox", "command": ["true"]},
    ]
    control_plane.batch.create_namespaced_job(namespace, body)
    pod = wait_for(lambda: job_pods(control_plane, namespace, "sidecar"), 30, "the job controller made no pod")[0]

    running = kubelet.run_pod(control_plane.core, pod.metadata.name, namespace)
    init = {s.name: s for s in running.status.init_container_statuses}
    assert init["sensor"].started and init["sensor"].ready and init["sensor"].state.running
    assert init["setup"].state.terminated.exit_code == 0


def test_deployment_makes_replicaset_and_pods(control_plane: Cluster, namespace: str) -> None:
    apps = client.AppsV1Api(control_plane.api)
    labels = {"app": "web"}
    apps.create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "web", "image": "nginx"}]},
                },
            },
        },
    )
    wait_for(
        lambda: len(control_plane.core.list_namespaced_pod(namespace, label_selector="app=web").items) == 2,
        30,
        "the deployment and replicaset controllers made no 2 pods",
    )
    assert len(apps.list_namespaced_replica_set(namespace).items) == 1
