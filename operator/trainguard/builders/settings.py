"""What the builders need to know about the installation, as opposed to the job: the operator's settings."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SensorSettings:
    """How the sensor sidecar is run in every pod of every job."""

    image: str = "ghcr.io/trainguard/trainguard-sensor:0.1.0"
    """The sensor's image (the trainguard image; `trainguard sensor` is its command). The admission policy refuses
    a guarded pod whose sensor runs any other image."""

    port: int = 9400
    """TCP port the sensor serves /v1/samples, /metrics and /healthz on, in the pod's network namespace."""

    uid: int = 65532
    """The sensor's own uid and gid: not the workload's, so that a workload process cannot signal or ptrace it
    without CAP_KILL / CAP_SYS_PTRACE (docs/threat-model.md). The admission policy refuses workload containers that
    run as this uid."""

    cpu_request: str = "50m"
    memory_request: str = "64Mi"
    memory_limit: str = "256Mi"


@dataclass(frozen=True)
class BuildSettings:
    """Everything about the installation that goes into a job's children."""

    sensor: SensorSettings = field(default_factory=SensorSettings)
    operator_namespace: str = "trainguard-system"
    """The namespace the operator (its sensor-stream collector) runs in: the only one allowed to reach the sensor
    port of a job's pods."""

    dns_namespace: str = "kube-system"
    """Where the cluster resolver runs; DNS egress is allowed to pods there on port 53 (UDP and TCP)."""

    dns_pod_labels: dict[str, str] = field(default_factory=lambda: {"k8s-app": "kube-dns"})
    """Labels of the cluster resolver's pods."""
