"""Pure builders: an AgentTrainingJob (as the API server returns it) in, Kubernetes manifests (plain dicts) out.

No I/O, no clock (it is passed in). `build` is the one entry point the reconcile needs; `admission` builds the
cluster's admission policy, `status` computes a job's status from what the API server says.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trainguard.api import v1alpha1
from trainguard.api.validation import InvalidResource, parse_agent_training_job
from trainguard.builders import admission, names, network, status, workload
from trainguard.builders.settings import BuildSettings, SensorSettings
from trainguard.builders.workload import UnbuildableSpec

__all__ = [
    "BuildSettings",
    "Children",
    "SensorSettings",
    "UnbuildableSpec",
    "admission",
    "build",
    "names",
    "network",
    "status",
]


@dataclass(frozen=True)
class Children:
    """Everything a job owns, in the order it must be applied: the ServiceAccount, the NetworkPolicies (so that
    no pod ever runs before its default deny), then the Job."""

    service_account: dict[str, Any]
    network_policies: list[dict[str, Any]]
    job: dict[str, Any]
    pod_labels: dict[str, str]

    def ordered(self) -> list[dict[str, Any]]:
        return [self.service_account, *self.network_policies, self.job]


def build(atj: Mapping[str, Any], settings: BuildSettings) -> Children:
    """The children of one AgentTrainingJob. UnbuildableSpec (a ValueError) says what to change."""
    body = {k: atj[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in atj}
    meta = body.get("metadata") or {}
    if not meta.get("name") or not meta.get("namespace") or not meta.get("uid"):
        raise UnbuildableSpec("metadata: name, namespace and uid are needed (an object read from the API server)")
    try:
        parsed = parse_agent_training_job(
            {"apiVersion": v1alpha1.API_VERSION, "kind": v1alpha1.KIND, "spec": body.get("spec")}
        )
    except InvalidResource as error:
        raise UnbuildableSpec("; ".join(error.problems)) from None
    job = workload.job(body, parsed, settings)
    return Children(
        service_account=workload.service_account(body),
        network_policies=network.network_policies(body, parsed, settings),
        job=job,
        pod_labels=dict(job["spec"]["template"]["metadata"]["labels"]),
    )
