"""What every rule is: a named pure function of an immutable input, returning findings.

The shape of cert-manager's policy checks: each rule has a name, a severity, a comment saying what
it catches and why, and a function from its input (the latest sample of the pod that was dialled,
the pod's recent history as summaries, the compiled policy, the time) to what it found. A rule
decides nothing about debounce, de-duplication or action: the engine does that, the same way for
every rule. docs/detection.md documents each rule's thresholds and blind spots.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from trainguard.api.sample import Connection, ProcessInfo, Sample
from trainguard.api.v1alpha1 import Monitoring, Severity
from trainguard.detection.policy import CompiledPolicy, ProcessVerdict
from trainguard.detection.violation import Evidence, EvidenceValue, Finding
from trainguard.detection.window import GpuStats

NOTHING: tuple[Finding, ...] = ()


@dataclass(frozen=True, slots=True)
class RuleInput:
    """What a rule sees. Nothing in it changes, and nothing outside it is read."""

    #: The pod the caller dialled (namespace/name): whom findings are about.
    pod: str
    #: Its latest sample.
    sample: Sample
    policy: CompiledPolicy
    monitoring: Monitoring
    #: The injected clock's time when the sample arrived.
    now: float
    #: The seq of the pod's previous sample (None for its first).
    previous_seq: int | None
    #: The GPUs whose window of busy samples is full, summarised (`window.Window.full`).
    full_gpus: tuple[GpuStats, ...]
    #: Seconds of gaps between the pod's samples (time beyond the sample interval) within the gap window.
    gap_seconds: float
    #: Whether an earlier sample of the pod showed a GPU.
    had_gpus: bool
    #: What the policy says of each of `sample.processes`, in order (`CompiledPolicy.process`, asked once).
    verdicts: tuple[ProcessVerdict, ...]


Check = Callable[[RuleInput], Sequence[Finding]]


@dataclass(frozen=True, slots=True)
class Rule:
    """A named check, its severity, and whether one violating sample is conclusive."""

    name: str
    severity: Severity
    #: Conclusive rules are confirmed on the first violating sample (debounce 1): there is no
    #: innocent reading of a known miner binary or a tunnel to port 22.
    conclusive: bool
    check: Check
    summary: str


def owner(sample: Sample, pid: int | None) -> ProcessInfo | None:
    """The pod process with this pid, if the sensor could say."""
    if pid is None:
        return None
    return next((p for p in sample.processes if p.pid == pid), None)


def process_evidence(p: ProcessInfo | None, pid: int | None = None) -> dict[str, EvidenceValue]:
    if p is None:
        return {"pid": pid, "process": "", "exe": "", "argv": []}
    return {
        "pid": p.pid,
        "process": p.name,
        "exe": p.exe or f"({p.exe_status})",
        "container": p.container,
        "argv": [a[:256] for a in p.argv[:32]],
    }


def connection_evidence(sample: Sample, c: Connection, **extra: EvidenceValue) -> Evidence:
    return {
        "remote": f"{c.remote.address}:{c.remote.port}",
        "local": f"{c.local.address}:{c.local.port}",
        "proto": c.proto,
        "state": c.state,
        **process_evidence(owner(sample, c.pid), c.pid),
        **extra,
    }
