"""A fake kubelet: writes the pod status a real kubelet would, through the status subresource.

The local control plane has no nodes, no scheduler and no kubelet, so pods stay Pending forever. Tests that need a
running pod (the operator watches pod phase, IPs and sidecar readiness) call these helpers. They change nothing but
``status``, exactly the part of a pod that a kubelet owns, so the API server's validation of status updates still
applies.
"""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

from kubernetes import client

_next_ip = itertools.count(2)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def next_pod_ip() -> str:
    """A fresh address in 10.244.0.0/16, as a CNI plugin would hand out."""
    n = next(_next_ip)
    return f"10.244.{n // 250}.{n % 250 + 2}"


def _is_native_sidecar(container: Any) -> bool:
    return getattr(container, "restart_policy", None) == "Always"


def _running_status(container: Any, started_at: str, ready: bool) -> dict[str, Any]:
    return {
        "name": container.name,
        "image": container.image,
        "imageID": f"docker-pullable://{container.image}@sha256:{'0' * 64}",
        "containerID": f"containerd://{container.name}-{'f' * 16}",
        "ready": ready,
        "started": True,
        "restartCount": 0,
        "state": {"running": {"startedAt": started_at}},
    }


def _terminated_status(container: Any, started_at: str, exit_code: int) -> dict[str, Any]:
    return {
        "name": container.name,
        "image": container.image,
        "imageID": f"docker-pullable://{container.image}@sha256:{'0' * 64}",
        "containerID": f"containerd://{container.name}-{'f' * 16}",
        "ready": False,
        "started": False,
        "restartCount": 0,
        "state": {
            "terminated": {
                "exitCode": exit_code,
                "reason": "Completed" if exit_code == 0 else "Error",
                "startedAt": started_at,
                "finishedAt": _now(),
            }
        },
    }


def _conditions(ready: bool, now: str) -> list[dict[str, Any]]:
    def condition(kind: str, status: bool) -> dict[str, Any]:
        return {"type": kind, "status": "True" if status else "False", "lastTransitionTime": now}

    return [
        condition("PodReadyToStartContainers", True),
        condition("Initialized", True),
        condition("Ready", ready),
        condition("ContainersReady", ready),
        condition("PodScheduled", True),
    ]


def run_pod(
    core: client.CoreV1Api, name: str, namespace: str, pod_ip: str | None = None, ready: bool = True
) -> client.V1Pod:
    """Report the pod Running: classic init containers completed, native sidecars started (and ready), app
    containers running. Returns the updated pod."""
    pod = core.read_namespaced_pod(name, namespace)
    now = _now()
    ip = pod_ip or (pod.status.pod_ip if pod.status and pod.status.pod_ip else next_pod_ip())
    init_statuses = [
        _running_status(c, now, ready) if _is_native_sidecar(c) else _terminated_status(c, now, 0)
        for c in pod.spec.init_containers or []
    ]
    status: dict[str, Any] = {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "hostIP": "172.18.0.2",
        "hostIPs": [{"ip": "172.18.0.2"}],
        "startTime": now,
        "qosClass": pod.status.qos_class if pod.status and pod.status.qos_class else "BestEffort",
        "conditions": _conditions(ready, now),
        "initContainerStatuses": init_statuses,
        "containerStatuses": [_running_status(c, now, ready) for c in pod.spec.containers],
    }
    return core.patch_namespaced_pod_status(name, namespace, {"status": status})


def finish_pod(core: client.CoreV1Api, name: str, namespace: str, exit_code: int = 0) -> client.V1Pod:
    """Report that every container exited with ``exit_code``: phase Succeeded for 0, Failed otherwise."""
    pod = core.read_namespaced_pod(name, namespace)
    now = _now()
    started = pod.status.start_time.strftime("%Y-%m-%dT%H:%M:%SZ") if pod.status and pod.status.start_time else now
    ip = pod.status.pod_ip if pod.status and pod.status.pod_ip else next_pod_ip()
    status: dict[str, Any] = {
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": started,
        "conditions": _conditions(False, now),
        "initContainerStatuses": [_terminated_status(c, started, 0) for c in pod.spec.init_containers or []],
        "containerStatuses": [_terminated_status(c, started, exit_code) for c in pod.spec.containers],
    }
    return core.patch_namespaced_pod_status(name, namespace, {"status": status})
