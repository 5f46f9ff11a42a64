"""The engine: samples and a policy in, decisions out. One engine per job; plain, every sample judged alike.

    engine = Engine(policy, EngineContext(...), clock=time.time, monitoring=spec.monitoring)
    for decision in engine.observe(pod, sample): ...   # as each pod's sample arrives from the pod dialled
    for decision in engine.tick(): ...                 # every second or so: silence, escalation by time

Every sample of the pod that was dialled runs every rule of the chain (`rules.CHAIN`), each a pure
function of an immutable `RuleInput`. Between the rules and the decisions sit, for every rule alike:

- **identity**: a sample naming another pod than the one dialled is `sensor.identity`, and nothing
  else in it is believed (it neither raises nor clears anything, nor counts as the pod being heard);
- **debounce**: a finding must be seen in `debounce.samples` consecutive samples of the pod, or
  have stood `debounce.seconds`, whichever comes first, before it is a violation. Conclusive rules
  are confirmed on the first sample;
- **de-duplication**: a violation is keyed by (pod, rule, identity). While it stands it is
  reported once (`new`), then `updated` only when its action changes; it clears (`cleared`) after
  the same debounce of clean samples, and one that comes back is a new occurrence;
- **escalation**: the action is `enforcement.action`, or the last escalation step whose
  conditions all hold (`escalation.choose_action`). Occurrences and distinct rules are counted over
  the job's lifetime in this engine; when a new violation raises them, every standing violation is
  re-judged, and `tick` re-judges them as they persist.

Times: a violation's first/last seen are sample times (`Sample.ts`); silence and gaps are judged by
the injected clock against when the pod's samples *arrived*, so a sensor with a skewed clock is
neither silenced nor excused. State survives as a small document (`snapshot`, `Engine.restore`);
a policy or context change applies to the running engine (`update`) without losing it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from trainguard.api.sample import Sample
from trainguard.api.v1alpha1 import Action, Monitoring, Policy, Severity
from trainguard.detection.context import EngineContext
from trainguard.detection.escalation import Standing, choose_action
from trainguard.detection.policy import CompiledPolicy
from trainguard.detection.rules import CHAIN, RULES, Rule, RuleInput
from trainguard.detection.rules.sensor import SENSOR_CAPPED, SENSOR_SILENT, sensor_identity, sensor_silent
from trainguard.detection.state import EngineState, PodState, TrackState
from trainguard.detection.violation import Decision, DecisionKind, Evidence, Finding, Violation
from trainguard.detection.window import Window

Clock = Callable[[], float]
#: A gap is counted when two samples arrive more than this many sample intervals apart.
GAP_FACTOR = 1.5


class ManualClock:
    """A clock that says what it is told: for replays and tests."""

    __slots__ = ("now",)

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def set(self, now: float) -> None:
        self.now = now


@dataclass(slots=True)
class _Track:
    """A finding being followed for one pod: pending (debouncing) or standing (a violation)."""

    rule: Rule
    identity: str
    first_seen: float
    last_seen: float
    evidence: Evidence
    #: Consecutive violating samples.
    count: int = 0
    #: Consecutive clean samples since it was last seen, and the time of the first of them.
    clean: int = 0
    clean_since: float = 0.0
    standing: bool = False
    occurrence: int = 0
    action: Action = "Alert"


@dataclass(slots=True)
class _Pod:
    window: Window
    #: When the pod's last (believed) sample arrived, by the engine's clock.
    last_heard: float
    #: When the one before it arrived, for the gaps (None before the first sample).
    last_arrival: float | None = None
    last_seq: int | None = None
    had_gpus: bool = False
    #: (arrival time, seconds of gap before it) within the gap window.
    gaps: deque[tuple[float, float]] = field(default_factory=deque)
    tracks: dict[tuple[str, str], _Track] = field(default_factory=dict)


class Engine:
    """Detection for one job: feed it samples (`observe`) and the time (`tick`), act on its decisions."""

    def __init__(
        self,
        policy: Policy,
        context: EngineContext | None = None,
        clock: Clock = time.time,
        monitoring: Monitoring | None = None,
    ) -> None:
        self.clock = clock
        self._pods: dict[str, _Pod] = {}
        self._occurrences = 0
        self._distinct: set[str] = set()
        self._policy = policy
        self.context = context or EngineContext()
        self.monitoring = monitoring or Monitoring()
        self._compile()

    def _compile(self) -> None:
        self.policy = CompiledPolicy(self._policy, self.context)
        enforcement = self._policy.enforcement
        self._enforcement = enforcement
        self._dry_run = enforcement.dry_run
        self._deb_samples = enforcement.debounce.samples
        self._deb_seconds = enforcement.debounce.seconds
        #: Severities the job's monitoring sets, by rule (else the rule's own).
        self._severities: dict[str, Severity] = {SENSOR_CAPPED: self.monitoring.sensor_cap_severity}

    # --- the API -------------------------------------------------------------------------------

    @property
    def rules(self) -> tuple[str, ...]:
        """The sample rules, in evaluation order (`sensor.silent` runs in tick, `sensor.identity` first)."""
        return tuple(r.name for r in CHAIN)

    @property
    def occurrences(self) -> int:
        """Violations (occurrences) confirmed in the job so far."""
        return self._occurrences

    def update(
        self,
        policy: Policy | None = None,
        context: EngineContext | None = None,
        monitoring: Monitoring | None = None,
        now: float | None = None,
    ) -> list[Decision]:
        """Apply a new policy, context (pod IPs, resolvers, selector peers) or monitoring to the running
        engine. Standing violations, debounce counts and escalation counts are kept; the standing
        violations are re-judged under the new enforcement at once (`updated` decisions); findings the
        new policy no longer makes clear with the next clean samples, as any finding does."""
        if policy is not None:
            self._policy = policy
        if context is not None:
            self.context = context
        if monitoring is not None:
            self.monitoring = monitoring
        self._compile()
        return self._rejudge(self.clock() if now is None else now)

    def observe(self, pod: str, sample: Sample) -> list[Decision]:
        """Evaluate one sample from the sensor of `pod` (namespace/name, the pod the caller dialled)."""
        now = self.clock()
        state = self._pods.get(pod)
        if state is None:
            state = self._pods[pod] = _Pod(Window(self.context.mining), now)
        if sample.pod != pod:
            return self._follow(pod, state, [sensor_identity(pod, sample.pod)], now, partial=True)
        state.last_heard = now
        gap_seconds = self._gaps(state, now)
        state.window.push(sample)
        inp = RuleInput(
            pod=pod,
            sample=sample,
            policy=self.policy,
            monitoring=self.monitoring,
            now=now,
            previous_seq=state.last_seq,
            full_gpus=state.window.full(),
            gap_seconds=gap_seconds,
            had_gpus=state.had_gpus,
            verdicts=tuple(map(self.policy.process, sample.processes)),
        )
        findings = [f for rule in CHAIN for f in rule.check(inp)]
        state.last_seq = sample.seq
        state.had_gpus = state.had_gpus or bool(sample.gpus)
        if not findings and not state.tracks:
            return []
        return self._follow(pod, state, findings, sample.ts)

    def tick(self, now: float | None = None) -> list[Decision]:
        """Judge the time: pods gone silent, and standing violations whose action changes as they persist."""
        if now is None:
            now = self.clock()
        out: list[Decision] = []
        silence = self.monitoring.sensor_silence_seconds
        for name, pod in self._pods.items():
            finding = sensor_silent(pod.last_heard, now, silence)
            if finding is None:
                continue
            key = (SENSOR_SILENT, "")
            track = pod.tracks.get(key)
            if track is None:
                track = pod.tracks[key] = _Track(RULES[SENSOR_SILENT], "", pod.last_heard, now, finding.evidence, 1)
                out.append(self._confirm(name, track, now))
            else:
                track.last_seen = now
                track.evidence = finding.evidence
        out.extend(self._rejudge(now))
        return out

    def expect(self, pod: str, now: float | None = None) -> None:
        """Start watching a pod before its first sample, so that a sensor that never reports is silent."""
        if pod not in self._pods:
            self._pods[pod] = _Pod(Window(self.context.mining), self.clock() if now is None else now)

    def forget(self, pod: str, now: float | None = None) -> list[Decision]:
        """Stop watching a pod (it was deleted); its standing violations are cleared."""
        state = self._pods.pop(pod, None)
        if state is None:
            return []
        when = self.clock() if now is None else now
        return [self._decision("cleared", pod, t, when) for t in state.tracks.values() if t.standing]

    def report(self, pod: str, finding: Finding, now: float | None = None) -> list[Decision]:
        """A finding the caller made outside any sample about `pod`: a stream line whose signature does not
        verify (`sensor.identity`), a sensor restart the API server reports (`sensor.restarted`). It goes
        through the same debounce, de-duplication and escalation as a sample's findings, and, like a sample
        naming another pod, it neither clears nor advances anything else (nor counts as the pod being heard)."""
        if finding.rule not in RULES:
            raise ValueError(f"unknown rule {finding.rule!r}")
        when = self.clock() if now is None else now
        state = self._pods.get(pod)
        if state is None:
            state = self._pods[pod] = _Pod(Window(self.context.mining), when)
        return self._follow(pod, state, [finding], when, partial=True)

    def standing(self) -> list[Violation]:
        """The violations standing now, in the order they were confirmed."""
        out = [self._violation(name, t) for name, pod in self._pods.items() for t in pod.tracks.values() if t.standing]
        return sorted(out, key=lambda v: v.occurrence)

    # --- state ---------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The state that must survive a restart, as a JSON-ready document (see `state.py`)."""
        doc = EngineState(
            occurrences=self._occurrences,
            distinctRules=sorted(self._distinct),
            pods={
                name: PodState(
                    seq=pod.last_seq,
                    tracks=[
                        TrackState(
                            rule=t.rule.name,
                            identity=t.identity,
                            firstSeen=t.first_seen,
                            lastSeen=t.last_seen,
                            evidence=dict(t.evidence),
                            count=t.count,
                            clean=t.clean,
                            cleanSince=t.clean_since,
                            standing=t.standing,
                            occurrence=t.occurrence,
                            action=t.action,
                        )
                        for t in pod.tracks.values()
                    ],
                )
                for name, pod in self._pods.items()
            },
        )
        return doc.model_dump(mode="json", by_alias=True)

    @classmethod
    def restore(
        cls,
        snapshot: Mapping[str, Any],
        policy: Policy,
        context: EngineContext | None = None,
        clock: Clock = time.time,
        monitoring: Monitoring | None = None,
    ) -> Engine:
        """An engine carrying on from `snapshot`; ValueError naming the field when the document is not one."""
        try:
            doc = EngineState.model_validate(snapshot)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(document)"
            raise ValueError(f"not an engine state: {where}: {first['msg']}") from None
        for name, pod in doc.pods.items():
            for t in pod.tracks:
                if t.rule not in RULES:
                    raise ValueError(f"not an engine state: pods.{name}: unknown rule {t.rule!r}")
        engine = cls(policy, context, clock, monitoring)
        engine._occurrences = doc.occurrences
        engine._distinct = set(doc.distinct_rules)
        now = clock()
        for name, pod in doc.pods.items():
            state = engine._pods[name] = _Pod(Window(engine.context.mining), now, last_seq=pod.seq)
            for t in pod.tracks:
                state.tracks[(t.rule, t.identity)] = _Track(
                    RULES[t.rule],
                    t.identity,
                    t.first_seen,
                    t.last_seen,
                    t.evidence,
                    count=t.count,
                    clean=t.clean,
                    clean_since=t.clean_since,
                    standing=t.standing,
                    occurrence=t.occurrence,
                    action=t.action,
                )
        return engine

    # --- internals -----------------------------------------------------------------------------

    def _gaps(self, pod: _Pod, now: float) -> float:
        """Record this arrival; the seconds of gaps (beyond the sample interval) within the gap window."""
        interval = self.monitoring.sample_interval_seconds
        if pod.last_arrival is not None:
            delta = now - pod.last_arrival
            if delta > GAP_FACTOR * interval:
                pod.gaps.append((now, delta - interval))
        pod.last_arrival = now
        horizon = now - self.monitoring.sensor_gap_window_seconds
        while pod.gaps and pod.gaps[0][0] <= horizon:
            pod.gaps.popleft()
        return sum(g for _, g in pod.gaps)

    def _follow(
        self, name: str, pod: _Pod, findings: list[Finding], ts: float, *, partial: bool = False
    ) -> list[Decision]:
        """Debounce, de-duplicate and decide, given this sample's findings for the pod. A partial sample
        (one naming another pod) neither clears nor advances anything but its own findings."""
        out: list[Decision] = []
        tracks = pod.tracks
        seen: set[tuple[str, str]] = set()
        confirmed: list[_Track] = []
        still: list[_Track] = []
        for f in findings:
            key = (f.rule, f.identity)
            if key in seen:
                continue
            seen.add(key)
            track = tracks.get(key)
            if track is None:
                track = tracks[key] = _Track(RULES[f.rule], f.identity, ts, ts, f.evidence)
            track.count += 1
            track.clean = 0
            track.last_seen = ts
            track.evidence = f.evidence
            if track.standing:
                still.append(track)
            elif (
                track.rule.conclusive
                or track.count >= self._deb_samples
                or (self._deb_seconds is not None and ts - track.first_seen >= self._deb_seconds)
            ):
                self._count(track)
                confirmed.append(track)
        # Actions are judged once every confirmation of this sample is counted, so two rules that
        # fire together both see distinctRules = 2.
        for track in confirmed:
            track.action = self._judge(track, ts)
            out.append(self._decision("new", name, track, ts))
        for track in still:
            action = self._judge(track, ts)
            if action != track.action:
                track.action = action
                out.append(self._decision("updated", name, track, ts))
        if not partial:
            silent = tracks.pop((SENSOR_SILENT, ""), None)
            if silent is not None:
                # A sample is the end of silence: cleared at once, no debounce.
                silent.last_seen = ts
                out.append(self._decision("cleared", name, silent, ts))
            for key, track in list(tracks.items()):
                if key in seen:
                    continue
                if not track.standing:
                    del tracks[key]  # the run of violating samples broke before the debounce
                    continue
                track.clean += 1
                if track.clean == 1:
                    track.clean_since = ts
                if track.clean >= self._deb_samples or (
                    self._deb_seconds is not None and ts - track.clean_since >= self._deb_seconds
                ):
                    del tracks[key]
                    out.append(self._decision("cleared", name, track, ts))
        if confirmed:
            out.extend(self._rejudge(ts, pod=name, skip=seen))
        return out

    def _count(self, track: _Track) -> None:
        """Make a pending track a standing violation: the job's next occurrence."""
        self._occurrences += 1
        self._distinct.add(track.rule.name)
        track.standing = True
        track.occurrence = self._occurrences

    def _confirm(self, pod: str, track: _Track, now: float) -> Decision:
        self._count(track)
        track.action = self._judge(track, now)
        return self._decision("new", pod, track, now)

    def _judge(self, track: _Track, now: float) -> Action:
        return choose_action(
            self._enforcement,
            Standing(
                persisted_seconds=now - track.first_seen,
                occurrences=self._occurrences,
                distinct_rules=len(self._distinct),
                severity=self._severities.get(track.rule.name, track.rule.severity),
            ),
        )

    def _rejudge(
        self, now: float, pod: str | None = None, skip: AbstractSet[tuple[str, str]] = frozenset()
    ) -> list[Decision]:
        """Re-judge the action of every standing violation (except `pod`'s keys in `skip`)."""
        out: list[Decision] = []
        for name, state in self._pods.items():
            for key, track in state.tracks.items():
                if not track.standing or (name == pod and key in skip):
                    continue
                action = self._judge(track, now)
                if action != track.action:
                    track.action = action
                    out.append(self._decision("updated", name, track, now))
        return out

    def _violation(self, pod: str, t: _Track) -> Violation:
        return Violation(
            rule=t.rule.name,
            severity=self._severities.get(t.rule.name, t.rule.severity),
            pod=pod,
            identity=t.identity,
            first_seen=t.first_seen,
            last_seen=t.last_seen,
            evidence=t.evidence,
            occurrence=t.occurrence,
        )

    def _decision(self, kind: DecisionKind, pod: str, t: _Track, now: float) -> Decision:
        return Decision(kind, self._violation(pod, t), t.action, self._dry_run, now)

