"""The ServiceAccount and the Indexed Job of an AgentTrainingJob, the sensor built into the pod template."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from trainguard.api import sensorproto, v1alpha1
from trainguard.builders import names
from trainguard.builders.settings import BuildSettings

#: Retries per index before that index fails (a quarantined pod's index fails at once, see podFailurePolicy).
DEFAULT_BACKOFF_LIMIT_PER_INDEX = 3


class UnbuildableSpec(ValueError):
    """A spec the CRD accepts but trainguard cannot build children from; the message says what to change."""


def policy_hash(job_spec: dict[str, Any]) -> str:
    """A short hash of the Job as built (its pod template, the sensor's image and configuration included): a
    change to it needs a new Job (a pod template is immutable); a change only to the NetworkPolicies does not."""
    material = json.dumps(job_spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def owner_reference(atj: dict[str, Any]) -> dict[str, Any]:
    meta = atj["metadata"]
    return {
        "apiVersion": v1alpha1.API_VERSION,
        "kind": v1alpha1.KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_metadata(atj: dict[str, Any], name: str, component: str) -> dict[str, Any]:
    meta = atj["metadata"]
    return {
        "name": name,
        "namespace": meta["namespace"],
        "labels": names.job_labels(meta["name"], component),
        "ownerReferences": [owner_reference(atj)],
    }


def service_account(atj: dict[str, Any]) -> dict[str, Any]:
    """The job's own ServiceAccount; no token is mounted from it unless the policy says so (on the pod)."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": child_metadata(atj, names.service_account_name(atj["metadata"]["name"]), "serviceaccount"),
        "automountServiceAccountToken": False,
    }


def sensor_policy(job: v1alpha1.AgentTrainingJob) -> dict[str, Any]:
    """The sensor's part of the policy, as JSON in its environment (TRAINGUARD_SENSOR_POLICY)."""
    return {
        "listenPorts": list(job.spec.policy.network.listen_ports),
        "sampleIntervalSeconds": job.spec.monitoring.sample_interval_seconds,
    }


def sensor_container(job: v1alpha1.AgentTrainingJob, settings: BuildSettings) -> dict[str, Any]:
    """The sensor as a native sidecar: an init container with restartPolicy Always, started before the workload,
    restarted by the kubelet if killed, and not holding the Job open."""
    s = settings.sensor
    return {
        "name": names.SENSOR_CONTAINER,
        "image": s.image,
        "imagePullPolicy": "IfNotPresent",
        "restartPolicy": "Always",
        "command": ["trainguard"],
        "args": [
            "sensor",
            "--address=0.0.0.0",
            f"--port={s.port}",
            f"--interval={job.spec.monitoring.sample_interval_seconds}",
            f"--key-file={sensorproto.SECRET_MOUNT_PATH}/{sensorproto.SECRET_KEY_NAME}",
        ],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {
                "name": "TRAINGUARD_SENSOR_POLICY",
                "value": json.dumps(sensor_policy(job), sort_keys=True, separators=(",", ":")),
            },
        ],
        "ports": [{"name": names.SENSOR_PORT_NAME, "containerPort": s.port, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": "/healthz", "port": s.port},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "resources": {
            "requests": {"cpu": s.cpu_request, "memory": s.memory_request},
            "limits": {"memory": s.memory_limit},
        },
        "volumeMounts": [
            {"name": names.SENSOR_KEY_VOLUME, "mountPath": sensorproto.SECRET_MOUNT_PATH, "readOnly": True},
        ],
        # Root with only the cut's capabilities: Kubernetes makes added capabilities effective for uid 0 only (no
        # ambient capabilities), and file capabilities are void under no_new_privs. Everything else is shut:
        # read-only root, no privilege escalation, RuntimeDefault seccomp; the group is the sensor's own.
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": s.uid,
            "runAsNonRoot": False,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"], "add": list(names.SENSOR_CAPABILITIES)},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }


def sensor_key_volume(name: str) -> dict[str, Any]:
    """The pod volume of the job's sensor key Secret: read-only for its owner only, and required (a pod whose
    Secret is missing does not start, rather than running a sensor without the authenticated protocol)."""
    return {
        "name": names.SENSOR_KEY_VOLUME,
        "secret": {
            "secretName": names.sensor_key_secret_name(name),
            "defaultMode": 0o400,
            "items": [{"key": sensorproto.SECRET_KEY_NAME, "path": sensorproto.SECRET_KEY_NAME}],
        },
    }


def harden_container(container: dict[str, Any], keep: set[str]) -> dict[str, Any]:
    """A workload container with no privilege escalation and without NET_RAW / NET_ADMIN unless kept."""
    out = copy.deepcopy(container)
    sc = out.setdefault("securityContext", {})
    sc["allowPrivilegeEscalation"] = False
    caps = sc.setdefault("capabilities", {})
    dropped = [c for c in v1alpha1.DROPPED_CAPABILITIES if c not in keep]
    if caps.get("add"):
        caps["add"] = [c for c in caps["add"] if c not in dropped]
        if not caps["add"]:
            del caps["add"]
    existing = list(caps.get("drop", []))
    caps["drop"] = existing + [c for c in dropped if c not in existing and "ALL" not in existing]
    if not caps["drop"]:
        del caps["drop"]
    if not caps:
        del sc["capabilities"]
    return out


def pod_template(atj: dict[str, Any], job: v1alpha1.AgentTrainingJob, settings: BuildSettings) -> dict[str, Any]:
    """The workload's template as written, hardened, labelled, with the sensor in front of its init containers."""
    name = atj["metadata"]["name"]
    raw = copy.deepcopy(atj["spec"]["template"])
    spec: dict[str, Any] = raw.get("spec", {})
    keep: set[str] = set(job.spec.policy.workload.keep_capabilities)
    if settings.sensor.port in job.spec.policy.network.listen_ports:
        raise UnbuildableSpec(
            f"spec.policy.network.listenPorts: port {settings.sensor.port} is the sensor's; listen on another port"
        )
    for container in job.spec.template.spec.all_containers():
        sc = container.security_context
        run_as = (sc.model_extra or {}).get("runAsUser") if sc is not None else None
        if run_as == settings.sensor.uid:
            raise UnbuildableSpec(
                f"spec.template.spec: container {container.name} runs as uid {run_as}, the sensor's own uid;"
                " choose another runAsUser"
            )
    if spec.get("ephemeralContainers"):
        raise UnbuildableSpec("spec.template.spec.ephemeralContainers: a Job's pod template cannot have any")
    spec["containers"] = [harden_container(c, keep) for c in spec.get("containers", [])]
    spec["initContainers"] = [sensor_container(job, settings)] + [
        harden_container(c, keep) for c in spec.get("initContainers", [])
    ]
    for volume in spec.get("volumes") or []:
        if volume.get("name") == names.SENSOR_KEY_VOLUME:
            raise UnbuildableSpec(f"spec.template.spec.volumes: {names.SENSOR_KEY_VOLUME} is the sensor's; rename it")
        if names.sensor_key_secret_name(name) in json.dumps(volume):
            raise UnbuildableSpec(
                f"spec.template.spec.volumes: {volume.get('name')} mounts the sensor's key Secret"
                f" {names.sensor_key_secret_name(name)}: the workload may never read it"
            )
    spec["volumes"] = [*(spec.get("volumes") or []), sensor_key_volume(name)]
    spec["shareProcessNamespace"] = True
    spec["restartPolicy"] = "Never"
    spec["serviceAccountName"] = names.service_account_name(name)
    token = job.spec.policy.workload.mount_service_account_token
    spec["automountServiceAccountToken"] = token
    spec["enableServiceLinks"] = spec.get("enableServiceLinks", False)
    meta = raw.setdefault("metadata", {})
    labels = dict(meta.get("labels") or {})
    for key in labels:
        if key.startswith(names.PREFIX):
            raise UnbuildableSpec(f"spec.template.metadata.labels: {key} is trainguard's own; remove it")
    labels[names.JOB_LABEL] = name
    meta["labels"] = labels
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if not k.startswith(names.PREFIX)}
    if token:
        annotations[names.TOKEN_ALLOWED_ANNOTATION] = "true"
    if keep:
        annotations[names.KEEP_CAPABILITIES_ANNOTATION] = ",".join(sorted(keep))
    meta["annotations"] = annotations
    raw["spec"] = spec
    return dict(raw)


def job(atj: dict[str, Any], parsed: v1alpha1.AgentTrainingJob, settings: BuildSettings) -> dict[str, Any]:
    """The Indexed batch/v1 Job: one pod per replica, and a quarantine that is final.

    A pod carrying the condition trainguard.io/Quarantined fails its index (FailIndex) instead of being replaced:
    the attack is not restarted, the other workers carry on, and the Job fails once any index has failed
    (backoffLimitPerIndex bounds the ordinary retries of each index). podReplacementPolicy Failed means a
    replacement is only made once the old pod is fully gone, never next to it.
    """
    name = atj["metadata"]["name"]
    spec = parsed.spec
    body: dict[str, Any] = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": child_metadata(atj, names.job_name(name), "job"),
        "spec": {
            "completionMode": "Indexed",
            "completions": spec.replicas,
            "parallelism": spec.replicas,
            "backoffLimitPerIndex": spec.backoff_limit
            if spec.backoff_limit is not None
            else DEFAULT_BACKOFF_LIMIT_PER_INDEX,
            "podReplacementPolicy": "Failed",
            "suspend": spec.suspend,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailIndex",
                        "onPodConditions": [{"type": names.QUARANTINED_CONDITION, "status": "True"}],
                    },
                    {
                        "action": "Ignore",
                        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                    },
                ]
            },
            "template": pod_template(atj, parsed, settings),
        },
    }
    if spec.active_deadline_seconds is not None:
        body["spec"]["activeDeadlineSeconds"] = spec.active_deadline_seconds
    digest = policy_hash(body["spec"])
    body["metadata"]["annotations"] = {names.POLICY_HASH_ANNOTATION: digest}
    body["spec"]["template"]["metadata"]["annotations"][names.POLICY_HASH_ANNOTATION] = digest
    return body
