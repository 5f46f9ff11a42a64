"""Status from what the API server says: phase, conditions, pod counts; pure, the clock passed in."""

from __future__ import annotations

from typing import Any

from trainguard.builders import names, status


def pod(
    name: str, phase: str = "Running", sensor_ready: bool = True, restarts: int = 0, **labels: str
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {names.JOB_LABEL: "j", **labels}},
        "status": {
            "phase": phase,
            "initContainerStatuses": [
                {"name": names.SENSOR_CONTAINER, "ready": sensor_ready, "restartCount": restarts}
            ],
        },
    }


def job(*conditions: str) -> dict[str, Any]:
    return {"status": {"conditions": [{"type": c, "status": "True"} for c in conditions]}}


def cond(s: dict[str, Any], kind: str) -> dict[str, Any]:
    found = status.condition(s, kind)
    assert found is not None
    return dict(found)


def test_a_reconciled_job_with_running_monitored_pods() -> None:
    seen = status.Observed(
        generation=3,
        job=job(),
        pods=[pod("a"), pod("b", sensor_ready=False), pod("c", "Pending", sensor_ready=False)],
        foreign_policies=[],
    )
    s = status.compute(None, seen, suspended=False, now="T1")
    assert s["phase"] == "Running" and s["observedGeneration"] == 3
    assert (s["replicas"], s["monitoredPods"], s["quarantinedPods"]) == (3, 1, [])
    assert cond(s, "Ready")["status"] == "True"
    enforcing = cond(s, "Enforcing")
    assert (enforcing["status"], enforcing["reason"]) == ("False", "SensorNotReady") and "b" in enforcing["message"]
    assert cond(s, "Violating")["status"] == "False"
    assert all(c["observedGeneration"] == 3 for c in s["conditions"])


def test_phases_follow_the_job() -> None:
    def phase(j: dict[str, Any] | None, pods: list[dict[str, Any]], suspended: bool = False) -> str:
        return str(status.compute(None, status.Observed(1, j, pods, []), suspended, "T")["phase"])

    assert phase(None, []) == "Pending"
    assert phase(job(), [pod("a", "Pending")]) == "Pending"
    assert phase(job("Complete"), [pod("a", "Succeeded")]) == "Succeeded"
    assert phase(job("Failed"), []) == "Failed"
    assert phase(job(), [], suspended=True) == "Suspended"


def test_a_problem_makes_ready_false_with_its_message() -> None:
    seen = status.Observed(1, None, [], [], status.Problem("JobRefused", "spec.template: Invalid value"))
    s = status.compute(None, seen, False, "T")
    ready = cond(s, "Ready")
    assert (ready["status"], ready["reason"], ready["message"]) == (
        "False",
        "JobRefused",
        "spec.template: Invalid value",
    )


def test_foreign_policies_and_sensor_restarts_degrade_and_quarantined_pods_are_listed() -> None:
    pods = [pod("a", restarts=2), pod("b", **{names.QUARANTINED_LABEL: "true"})]
    s = status.compute(None, status.Observed(1, job(), pods, ["allow-all"]), False, "T")
    degraded = cond(s, "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "ForeignNetworkPolicy"
    assert "allow-all" in degraded["message"] and "SensorRestarted" not in degraded["message"]
    assert "restarted in pods: a" in degraded["message"]
    assert s["quarantinedPods"] == ["b"]


def test_transition_times_move_only_on_a_change_and_foreign_fields_are_kept() -> None:
    seen = status.Observed(1, job(), [pod("a")], [])
    first = status.compute(None, seen, False, "T1")
    first["violationCount"] = 4
    first["conditions"] = [
        c if c["type"] != "Violating" else {**c, "status": "True", "reason": "NetTunnel"} for c in first["conditions"]
    ]
    second = status.compute(first, seen, False, "T2")
    assert all(c["lastTransitionTime"] == "T1" for c in second["conditions"])
    assert second["violationCount"] == 4 and cond(second, "Violating")["reason"] == "NetTunnel"
    assert status.same(first, second)
    third = status.compute(second, status.Observed(1, job(), [pod("a", sensor_ready=False)], []), False, "T3")
    assert cond(third, "Enforcing")["lastTransitionTime"] == "T3" and cond(third, "Ready")["lastTransitionTime"] == "T1"
    assert not status.same(second, third)
