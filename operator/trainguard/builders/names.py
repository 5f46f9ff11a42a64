"""The names, labels and annotations trainguard puts on what it builds: one place, so that the handlers, the
admission policy and the NetworkPolicies agree."""

from __future__ import annotations

from typing import Final

from trainguard.api import v1alpha1

PREFIX: Final = "trainguard.io/"

#: On every child and every pod of a job: the AgentTrainingJob's name.
JOB_LABEL: Final = "trainguard.io/job"
#: Set on a pod to revoke every allow of its job's NetworkPolicies (the enforcement issue sets it).
QUARANTINED_LABEL: Final = "trainguard.io/quarantined"
#: Says which kind of child an object is (serviceaccount, job, networkpolicy).
COMPONENT_LABEL: Final = "trainguard.io/component"
MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
MANAGED_BY: Final = "trainguard"

#: The hash of everything a job's pods are built from; a change means a new Job.
POLICY_HASH_ANNOTATION: Final = "trainguard.io/policy-hash"
#: Present with value "true" on a pod whose policy allows an API token (the admission policy reads it).
TOKEN_ALLOWED_ANNOTATION: Final = "trainguard.io/service-account-token"
#: Comma-separated capabilities the policy keeps (NET_RAW, NET_ADMIN); the admission policy reads it.
KEEP_CAPABILITIES_ANNOTATION: Final = "trainguard.io/keep-capabilities"

#: The pod condition that makes a quarantine final (the Job's podFailurePolicy matches it).
QUARANTINED_CONDITION: Final = "trainguard.io/Quarantined"

#: The sensor's container name: the API owns it (the CRD refuses it in a template).
SENSOR_CONTAINER: Final = v1alpha1.SENSOR_CONTAINER
SENSOR_PORT_NAME: Final = "tg-sensor"
#: The pod volume holding the job's sensor key (the Secret `sensor_key_secret_name(job)`), mounted into the sensor
#: container only; the admission policy refuses it (and the Secret by any other route) in every other container.
SENSOR_KEY_VOLUME: Final = "trainguard-sensor-key"
#: What the sensor needs for the cut and for reading other uids' processes, and nothing more (docs/sensor.md):
#: NET_ADMIN (sock_diag SOCK_DESTROY in the pod's network namespace), KILL (stop the offenders),
#: SYS_PTRACE and DAC_READ_SEARCH (/proc/<pid>/fd, exe and environ of processes of other uids).
SENSOR_CAPABILITIES: Final = ("DAC_READ_SEARCH", "KILL", "NET_ADMIN", "SYS_PTRACE")

FIELD_MANAGER: Final = "trainguard"
FINALIZER: Final = "trainguard.io/finalizer"


def job_name(name: str) -> str:
    """The batch/v1 Job of an AgentTrainingJob has its name (the pods are then `<name>-<index>-<suffix>`)."""
    return name


def service_account_name(name: str) -> str:
    return f"{name}-workload"


def sensor_key_secret_name(name: str) -> str:
    """The Secret (key `sensorproto.SECRET_KEY_NAME`) holding the job's sensor key; the operator creates it."""
    return f"{name}-sensor-key"


def network_policy_name(name: str, part: str) -> str:
    return f"{name}-{part}"


def job_labels(name: str, component: str) -> dict[str, str]:
    return {JOB_LABEL: name, COMPONENT_LABEL: component, MANAGED_BY_LABEL: MANAGED_BY}


#: The Secret holding a job's sensor key (issue 13): mounted into the sensor container only.
SENSOR_KEY_COMPONENT: Final = "sensor-key"
#: On a quarantined pod: the evidence (rule, process, remote, sample time) as JSON.
EVIDENCE_ANNOTATION: Final = "trainguard.io/evidence"
