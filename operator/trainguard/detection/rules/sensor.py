"""The sensor rules: the sensor's health is evidence. A blind, frozen, restarted or impersonated sensor
is how a workload would hide, so each is a finding of its own."""

from __future__ import annotations

from collections.abc import Sequence

from trainguard.api.sample import SensorErrorKind
from trainguard.detection.rules.base import NOTHING, Rule, RuleInput
from trainguard.detection.violation import Finding

SENSOR_RESTARTED = "sensor.restarted"
SENSOR_SILENT = "sensor.silent"
SENSOR_GAP = "sensor.gap"
SENSOR_DEGRADED = "sensor.degraded"
SENSOR_CAPPED = "sensor.capped"
SENSOR_IDENTITY = "sensor.identity"

#: Sensor errors that hide part of the pod from the rules (docs/detection.md says why each is here):
#: processes or sockets unreadable (permission, a failed read), stale (an overrun the workload can
#: cause by spawning), socket families not read (the /proc/net fallback sees no raw, packet or ICMP
#: sockets), a GPU query failed. Not here: the caps (`CAPS`, a rule of their own), `gpu_unsupported`
#: (a reading the GPU cannot give, e.g. MIG: a fact about the hardware, its field is null) and
#: `attribution` (an unattributed GPU process is itself `gpu.process.unexpected`). `gpu_unavailable`
#: counts only for a pod that showed a GPU before (a pod without GPUs always reports it).
HIDING: frozenset[SensorErrorKind] = frozenset(
    {
        SensorErrorKind.PROC_READ,
        SensorErrorKind.PROC_PERMISSION,
        SensorErrorKind.PROC_STALE,
        SensorErrorKind.NET_READ,
        SensorErrorKind.NET_FALLBACK,
        SensorErrorKind.GPU_READ,
        SensorErrorKind.GPU_STALE,
    }
)
#: The sensor's caps (processes, sockets, fd links per sample): a pod past one has more than the sensor
#: reads, and what it holds past the cap is unseen. The pod alone decides how many it holds.
CAPS: frozenset[SensorErrorKind] = frozenset(
    {SensorErrorKind.PROCESS_CAP, SensorErrorKind.CONNECTION_CAP, SensorErrorKind.FD_CAP}
)


def sensor_restarted(inp: RuleInput) -> Sequence[Finding]:
    """seq went back: the sensor restarted (or was restarted: killing it is how one hides)."""
    prev = inp.previous_seq
    if prev is None or inp.sample.seq >= prev:
        return NOTHING
    return (Finding(SENSOR_RESTARTED, "", {"seq": inp.sample.seq, "previousSeq": prev}),)


def sensor_gap(inp: RuleInput) -> Sequence[Finding]:
    """The gaps between the pod's samples (time beyond the sample interval, by the engine's clock) add
    up past monitoring.sensorGapToleranceSeconds within sensorGapWindowSeconds: a sensor frozen for
    part of every few seconds (SIGSTOP 7 s of every 9) stays under the silence bound and sees nothing."""
    m = inp.monitoring
    if inp.gap_seconds <= m.sensor_gap_tolerance_seconds:
        return NOTHING
    evidence = {
        "gapSeconds": round(inp.gap_seconds, 3),
        "windowSeconds": m.sensor_gap_window_seconds,
        "toleranceSeconds": m.sensor_gap_tolerance_seconds,
    }
    return (Finding(SENSOR_GAP, "", evidence),)


def sensor_degraded(inp: RuleInput) -> Sequence[Finding]:
    """A structured sensor error that hides part of the pod (`HIDING`), or no socket reader at all;
    identity: the error kind."""
    sensor = inp.sample.sensor
    found: dict[str, Finding] = {}
    for e in sensor.errors:
        kind = e.kind
        hides = kind in HIDING or (kind == SensorErrorKind.GPU_UNAVAILABLE and inp.had_gpus)
        if hides and kind.value not in found:
            found[kind.value] = Finding(SENSOR_DEGRADED, kind.value, {"kind": kind.value, "message": e.message[:512]})
    if sensor.reader == "none":
        found["reader"] = Finding(SENSOR_DEGRADED, "reader", {"kind": "reader", "message": "no socket reader"})
    return tuple(found.values()) or NOTHING


def sensor_capped(inp: RuleInput) -> Sequence[Finding]:
    """The sample hit one of the sensor's caps (`CAPS`): decoys spawned or sockets opened first push a
    miner or a tunnel out of the sample, and every rule that would have caught it is blind to it. The
    workload is the only one that decides how many processes and sockets it holds, so this is not a
    degraded sensor but the pod hiding: its severity is `monitoring.sensorCapSeverity` (Critical by
    default, so that hiding a Critical finding past a cap never costs less than the finding itself);
    identity: the cap's kind. Debounced like any rule that is not conclusive."""
    found: dict[str, Finding] = {}
    for e in inp.sample.sensor.errors:
        kind = e.kind
        if kind in CAPS and kind.value not in found:
            found[kind.value] = Finding(SENSOR_CAPPED, kind.value, {"kind": kind.value, "message": e.message[:512]})
    return tuple(found.values()) or NOTHING


def sensor_identity(pod: str, claimed: str) -> Finding:
    """A sample from the pod's sensor that names another pod: forged, or a sensor that is not this pod's.
    Judged by the engine before any rule (nothing else in such a sample is believed)."""
    return Finding(SENSOR_IDENTITY, "", {"dialled": pod, "claimed": claimed[:256]})


def sensor_silent(last_heard: float, now: float, silence_seconds: float) -> Finding | None:
    """No sample from the pod for monitoring.sensorSilenceSeconds, by the injected clock. Run by
    `Engine.tick(now)`, not per sample: silence is the absence of samples."""
    quiet = now - last_heard
    if quiet < silence_seconds:
        return None
    return Finding(SENSOR_SILENT, "", {"silentSeconds": round(quiet, 3), "bound": silence_seconds})


def _judged_elsewhere(_: RuleInput) -> Sequence[Finding]:
    """sensor.silent and sensor.identity are judged by the engine itself (`sensor_silent`, `sensor_identity`)."""
    return NOTHING


RULES: tuple[Rule, ...] = (
    Rule(SENSOR_RESTARTED, "Medium", True, sensor_restarted, "sensor restarted"),
    Rule(SENSOR_GAP, "High", True, sensor_gap, "gaps in the sensor's samples"),
    Rule(SENSOR_DEGRADED, "Medium", False, sensor_degraded, "sensor cannot see part of the pod"),
    # The severity here is the default of monitoring.sensorCapSeverity, which the engine applies.
    Rule(SENSOR_CAPPED, "Critical", False, sensor_capped, "pod holds more than the sensor reads"),
)
#: Rules the engine evaluates itself, outside the chain.
OUTSIDE: tuple[Rule, ...] = (
    Rule(SENSOR_SILENT, "High", True, _judged_elsewhere, "sensor silent"),
    Rule(SENSOR_IDENTITY, "High", True, _judged_elsewhere, "sample names another pod"),
)
