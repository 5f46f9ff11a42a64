"""What the engine outputs: violations (what was seen) and decisions (what to do about them)."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple

from trainguard.api.v1alpha1 import Action, Severity

#: A value in a violation's evidence: JSON scalars and lists of strings.
EvidenceValue = str | int | float | bool | None | list[str]
Evidence = Mapping[str, EvidenceValue]

DecisionKind = Literal["new", "updated", "cleared"]

#: Severities from lowest to highest.
SEVERITY_ORDER: tuple[Severity, ...] = ("Low", "Medium", "High", "Critical")
SEVERITY_RANK: dict[Severity, int] = {s: i for i, s in enumerate(SEVERITY_ORDER)}


class Finding(NamedTuple):
    """What one rule saw in one sample: the rule, what it is about, and the evidence.

    `identity` keys a standing violation together with the pod and the rule: the remote address,
    the process name, the GPU, the port. The same identity in consecutive samples is the same
    violation.
    """

    rule: str
    identity: str
    evidence: Evidence


def iso(ts: float) -> str:
    """Unix seconds as RFC 3339 UTC, to the millisecond."""
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def summarize(evidence: Evidence, limit: int = 4096) -> str:
    """Evidence as one line, `key=value` pairs in insertion order, cut to `limit` characters."""
    parts = []
    for key, value in evidence.items():
        if isinstance(value, list):
            text = ",".join(value)
        elif isinstance(value, float):
            text = f"{value:.3g}"
        else:
            text = str(value)
        parts.append(f"{key}={text}")
    line = " ".join(parts)
    return line if len(line) <= limit else line[: limit - 1] + "…"


@dataclass(frozen=True, slots=True)
class Violation:
    """One occurrence of a rule violated by one pod, about one thing (its identity)."""

    rule: str
    severity: Severity
    #: namespace/name of the pod.
    pod: str
    #: What the violation is about: the remote address, the process name, the GPU, the port.
    identity: str
    #: When the violation was first seen (the first violating sample, before the debounce), Unix seconds.
    first_seen: float
    #: When it was last seen, Unix seconds.
    last_seen: float
    #: The latest evidence: the process, the remote address, the metric values.
    evidence: Evidence
    #: The n-th violation in the job (1-based), as counted for escalation.
    occurrence: int

    @property
    def key(self) -> tuple[str, str, str]:
        """(pod, rule, identity): what de-duplicates a standing violation."""
        return (self.pod, self.rule, self.identity)

    def summary(self) -> str:
        return summarize(self.evidence)

    def to_dict(self) -> dict[str, object]:
        return {
            "rule": self.rule,
            "severity": self.severity,
            "pod": self.pod,
            "identity": self.identity,
            "firstSeen": iso(self.first_seen),
            "lastSeen": iso(self.last_seen),
            "occurrence": self.occurrence,
            "evidence": dict(self.evidence),
        }


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do about a violation, and why now: it is new, its action changed, or it cleared."""

    kind: DecisionKind
    violation: Violation
    action: Action
    dry_run: bool
    #: When the decision was made, Unix seconds (sample time, or the clock for tick decisions).
    time: float

    def to_dict(self) -> dict[str, object]:
        return {
            "time": iso(self.time),
            "kind": self.kind,
            "action": self.action,
            "dryRun": self.dry_run,
            **self.violation.to_dict(),
        }
