"""An AgentTrainingJob's status from what the API server says about its children: pure, clock injected."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trainguard.builders import names


@dataclass(frozen=True)
class Problem:
    """Why a job could not be reconciled: a CamelCase reason and the API server's (or trainguard's) message."""

    reason: str
    message: str


@dataclass(frozen=True)
class Observed:
    """What one reconcile saw."""

    generation: int
    job: Mapping[str, Any] | None
    pods: Sequence[Mapping[str, Any]]
    foreign_policies: Sequence[str]
    problem: Problem | None = None
    #: What weakens the guard besides the children, from the guard itself (a job's Prometheus unreachable).
    guard_problems: Sequence[Problem] = ()


def _job_condition(job: Mapping[str, Any] | None, kind: str) -> bool:
    conditions = ((job or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") == kind and c.get("status") == "True" for c in conditions)


def phase(observed: Observed, suspended: bool) -> str:
    job = observed.job
    if _job_condition(job, "Complete"):
        return "Succeeded"
    if _job_condition(job, "Failed"):
        return "Failed"
    if suspended or _job_condition(job, "Suspended"):
        return "Suspended"
    if any((p.get("status") or {}).get("phase") == "Running" for p in observed.pods):
        return "Running"
    return "Pending"


def sensor_status(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for s in (pod.get("status") or {}).get("initContainerStatuses") or []:
        if s.get("name") == names.SENSOR_CONTAINER:
            return s  # type: ignore[no-any-return]
    return None


def monitored(pod: Mapping[str, Any]) -> bool:
    """A pod is monitored when the kubelet reports its sensor ready (its /healthz saw a fresh sample)."""
    s = sensor_status(pod)
    return bool(s and s.get("ready"))


def _live(pod: Mapping[str, Any]) -> bool:
    finished = (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
    return not finished and not (pod.get("metadata") or {}).get("deletionTimestamp")


def _condition(
    previous: Mapping[str, Mapping[str, Any]], kind: str, ok: bool, reason: str, message: str, *, gen: int, now: str
) -> dict[str, Any]:
    status = "True" if ok else "False"
    old = previous.get(kind)
    since = old["lastTransitionTime"] if old and old.get("status") == status and old.get("lastTransitionTime") else now
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
        "observedGeneration": gen,
    }


def compute(current: Mapping[str, Any] | None, observed: Observed, suspended: bool, now: str) -> dict[str, Any]:
    """The new status. Fields this reconcile does not own (violations, the Violating condition once the
    enforcement sets it) are carried over from `current`."""
    current = dict(current or {})
    previous = {c["type"]: c for c in current.get("conditions") or [] if "type" in c}
    gen = observed.generation
    pods = list(observed.pods)
    live = [p for p in pods if _live(p)]
    quarantined = sorted(
        str(p["metadata"]["name"]) for p in pods if names.QUARANTINED_LABEL in (p["metadata"].get("labels") or {})
    )
    watched = [p for p in live if monitored(p)]
    restarted = sorted(str(p["metadata"]["name"]) for p in live if (sensor_status(p) or {}).get("restartCount", 0) > 0)
    problem = observed.problem
    conditions = []
    if problem is not None:
        conditions.append(_condition(previous, "Ready", False, problem.reason, problem.message, gen=gen, now=now))
        conditions.append(
            _condition(
                previous, "Enforcing", False, problem.reason, "children not applied: see Ready", gen=gen, now=now
            )
        )
    else:
        conditions.append(
            _condition(
                previous,
                "Ready",
                True,
                "Reconciled",
                "ServiceAccount, NetworkPolicies and Job applied",
                gen=gen,
                now=now,
            )
        )
        running = [p for p in live if (p.get("status") or {}).get("phase") == "Running"]
        unwatched = [str(p["metadata"]["name"]) for p in running if not monitored(p)]
        if unwatched:
            conditions.append(
                _condition(
                    previous,
                    "Enforcing",
                    False,
                    "SensorNotReady",
                    f"running pods whose sensor is not ready: {', '.join(sorted(unwatched))}",
                    gen=gen,
                    now=now,
                )
            )
        else:
            conditions.append(
                _condition(
                    previous,
                    "Enforcing",
                    True,
                    "NetworkPoliciesApplied",
                    "default deny and declared allows in place; every running pod's sensor is ready",
                    gen=gen,
                    now=now,
                )
            )
    violating = previous.get("Violating")
    if violating is None:
        conditions.append(
            _condition(previous, "Violating", False, "NoViolations", "no violation seen", gen=gen, now=now)
        )
    else:
        conditions.append(dict(violating))
    degraded_reasons = []
    if observed.foreign_policies:
        degraded_reasons.append(
            (
                "ForeignNetworkPolicy",
                "NetworkPolicies not made by trainguard select this job's pods and could reopen a quarantined one: "
                + ", ".join(observed.foreign_policies),
            )
        )
    if restarted:
        degraded_reasons.append(("SensorRestarted", f"the sensor restarted in pods: {', '.join(restarted)}"))
    degraded_reasons.extend((p.reason, p.message) for p in observed.guard_problems)
    if degraded_reasons:
        conditions.append(
            _condition(
                previous,
                "Degraded",
                True,
                degraded_reasons[0][0],
                "; ".join(m for _, m in degraded_reasons),
                gen=gen,
                now=now,
            )
        )
    else:
        conditions.append(
            _condition(previous, "Degraded", False, "AsDeclared", "nothing weakens the guard", gen=gen, now=now)
        )
    current.update(
        {
            "phase": phase(observed, suspended),
            "conditions": conditions,
            "observedGeneration": gen,
            "replicas": len(live),
            "monitoredPods": len(watched),
            "quarantinedPods": quarantined,
            "violationCount": current.get("violationCount", 0),
        }
    )
    return current


def condition(status: Mapping[str, Any] | None, kind: str) -> Mapping[str, Any] | None:
    for c in (status or {}).get("conditions") or []:
        if c.get("type") == kind:
            return c  # type: ignore[no-any-return]
    return None


def same(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Whether two statuses say the same thing (a status patch is needed only when not)."""
    return dict(a or {}) == dict(b or {})
