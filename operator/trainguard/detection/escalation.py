"""The escalation ladder: which action a violation gets, given what the job has done so far."""

from __future__ import annotations

from dataclasses import dataclass

from trainguard.api.v1alpha1 import Action, EnforcementPolicy, EscalationStep, Severity
from trainguard.detection.violation import SEVERITY_RANK


@dataclass(frozen=True, slots=True)
class Standing:
    """The facts an escalation step's conditions are about, for one violation at one time."""

    #: Seconds the violation has stood (now minus first seen).
    persisted_seconds: float
    #: Violation occurrences in the job so far, this one included.
    occurrences: int
    #: Distinct rules violated in the job so far, this one's included.
    distinct_rules: int
    severity: Severity


def step_holds(step: EscalationStep, s: Standing) -> bool:
    """Every condition the step sets holds (unset conditions do not count)."""
    if step.persists_seconds is not None and s.persisted_seconds < step.persists_seconds:
        return False
    if step.occurrences is not None and s.occurrences < step.occurrences:
        return False
    if step.distinct_rules is not None and s.distinct_rules < step.distinct_rules:
        return False
    return step.min_severity is None or SEVERITY_RANK[s.severity] >= SEVERITY_RANK[step.min_severity]


def choose_action(enforcement: EnforcementPolicy, s: Standing) -> Action:
    """The last escalation step whose conditions all hold wins; before any holds, `action` applies.

    Taken literally, as the API documents it: a later step with a milder action than an earlier
    one wins when it holds (order the steps mildest first).
    """
    action = enforcement.action
    for step in enforcement.escalation:
        if step_holds(step, s):
            action = step.action
    return action
