"""The engine: samples and a policy in, decisions out. One engine per job.

    engine = Engine(policy, EngineContext(...), clock=time.time, monitoring=spec.monitoring)
    for decision in engine.observe(sample): ...     # as each pod's sample arrives
    for decision in engine.tick(): ...              # every second or so: silence, escalation by time

Between the rules and the decisions sit, for every rule alike:

- **debounce**: a finding must be seen in `debounce.samples` consecutive samples of the pod, or
  have stood `debounce.seconds`, whichever comes first, before it is a violation. Conclusive rules
  (a known miner, a tunnel, the mining signature whose window is its own debounce, the sensor
  rules) are confirmed on the first sample.
- **de-duplication**: a violation is keyed by (pod, rule, identity). While it stands it is
  reported once (`new`), then `updated` only when its action changes; it clears (`cleared`) after
  the same debounce of clean samples, and one that comes back is a new occurrence.
- **escalation**: the action is `enforcement.action`, or the last escalation step whose
  conditions all hold (`escalation.choose_action`). Occurrences and distinct rules are counted over
  the job's lifetime in this engine; when a new violation raises them, every standing violation is
  re-judged, and `tick` re-judges them as they persist.

**The steady-state fast path.** Most samples of a pod look like the one before: the same
processes, listeners and connections, GPUs within their bounds. The engine remembers what it has
already judged harmless, in sets keyed by exactly what the rules read (a process's command line and
name, a listener's port, a connection's protocol, local and remote address and state) and proves
a sample clean with a few C-level set lookups. A connection is also harmless, known or not, when
it is not up or being attempted or its remote is quiet (never a finding), so that the churn of
connections (new ephemeral ports, TIME_WAIT) stays on this path. Only a sample with something
not yet known to be harmless (or a pod with a finding being followed) is evaluated rule by rule.
What is remembered stays true: the policy does not change, the job's pod IPs only grow, and a
connection judged harmless because it is inbound is forgotten when the pod's listening ports
change.
`Engine(..., fast_path=False)` evaluates every sample rule by rule (the reference the tests
compare it with).

Times: a violation's first/last seen are sample times (`Sample.ts`); silence is judged by the
injected clock against when the pod's last sample arrived, so a sensor with a skewed clock is
neither silenced nor excused.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from itertools import chain
from operator import attrgetter

from trainguard.api.sample import Connection, Sample
from trainguard.api.v1alpha1 import Action, Monitoring, Policy
from trainguard.detection.compiled import CompiledPolicy
from trainguard.detection.context import EngineContext
from trainguard.detection.endpoints import parse_ip
from trainguard.detection.escalation import Standing, choose_action
from trainguard.detection.rules import (
    CHAIN,
    GPU_BOUNDS,
    GPU_WINDOW,
    LISTENING,
    NETWORK,
    PROCESSES,
    RULES,
    SENSOR_SILENT,
    SEQUENCE,
    Rule,
    RuleInput,
    active_sections,
    outbound,
    passed_over,
    sensor_silent,
)
from trainguard.detection.violation import Decision, DecisionKind, Evidence, Finding, Violation
from trainguard.detection.window import Window

Clock = Callable[[], float]

#: The fast path's keys, as C-level getters: what the rules read of a process (its policy facts are
#: a function of its command line and name), of a GPU process (the same, as a 3-tuple so that a key
#: never stands for both: what is harmless differs) and of a connection; and a listener's port.
_PROCESS_KEY = attrgetter("cmdline", "name")
_GPU_PROCESS_KEY = attrgetter("cmdline", "name", "name")
_CONNECTION_KEY = attrgetter("proto", "local", "remote", "state")
_PORT = attrgetter("port")
_LOCAL = attrgetter("local")
_GPU_PROCESSES = attrgetter("processes")
#: The fast path's fingerprint of a sample's contents: its processes', listeners' and connections'
#: fields, as the dicts the models keep them in (compared in C, field by field, with no hashing and
#: nothing allocated per element), and its GPU processes' (command line, name). Keys built with
#: `attrgetter` (a tuple per object) or flat lists of fields (a C call per field: a pydantic model's
#: attribute goes through its `__getattr__` hook) measured slower on freshly parsed samples.
_FIELDS = attrgetter("__dict__")
#: Known-harmless keys kept per pod before the set is emptied (and learned again).
KNOWN_LIMIT = 4096


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
    #: When the pod's last sample arrived, by the engine's clock.
    last_heard: float
    tracks: dict[tuple[str, str], _Track] = field(default_factory=dict)
    #: The fast path's memory: the keys of processes, GPU processes and connections known to be
    #: no finding while the pod listens on `ports`, all exempt (None: not known yet). An inbound
    #: connection is one to a port the pod listens on, so the set is emptied when they change.
    known: set[tuple[str, ...]] = field(default_factory=set)
    ports: tuple[int, ...] | None = None
    #: The fingerprint (`_fingerprint`) of the last sample whose contents were proven clean by
    #: `known` and `ports`. A sample with the same fingerprint holds the same keys and ports, so it
    #: is clean too while they hold: it is forgotten when `known` is emptied (it only grows otherwise).
    clean: list[object] | None = None
    #: The sections (the list objects) of the last sample proven clean, and its GPU processes'
    #: keys: a sample holding the very same lists holds the same contents. Forgotten with `clean`.
    same: tuple[object, object, object, list[tuple[str, str]]] | None = None


class Engine:
    """Detection for one job: feed it samples (`observe`) and the time (`tick`), act on its decisions."""

    def __init__(
        self,
        policy: Policy,
        context: EngineContext | None = None,
        clock: Clock = time.time,
        monitoring: Monitoring | None = None,
        *,
        fast_path: bool = True,
    ) -> None:
        self.context = context or EngineContext()
        self.policy = CompiledPolicy(policy, self.context)
        self.clock = clock
        self.monitoring = monitoring or Monitoring()
        self._chain: tuple[Rule, ...] = tuple(r for r in CHAIN if r.enabled(self.policy))
        self._checks = tuple((r.sections, r.check) for r in self._chain)
        self._pods: dict[str, _Pod] = {}
        self._job_ips: set[bytes] = {parse_ip(i).packed for i in self.context.job_pod_ips}
        self._learned_locals: set[str] = set()
        self._quiet: dict[str, set[str]] = {}
        self._occurrences = 0
        self._distinct: set[str] = set()
        enforcement = policy.enforcement
        self._enforcement = enforcement
        self._dry_run = enforcement.dry_run
        self._deb_samples = enforcement.debounce.samples
        self._deb_seconds = enforcement.debounce.seconds
        # The fast path (see the module's docstring). The sample rules fall in two kinds: those
        # reading what a sample holds (processes, listeners, connections), proven silent by the
        # known-harmless sets, and those reading numbers (GPU bounds, the mining window, seq),
        # checked at every sample as `active_sections` does.
        self._fast = fast_path
        sections = 0
        for r in self._chain:
            sections |= r.sections
        self._window_on = bool(sections & GPU_WINDOW)
        self._sequence_on = bool(sections & SEQUENCE)
        assert not sections & ~(PROCESSES | NETWORK | LISTENING | GPU_BOUNDS | GPU_WINDOW | SEQUENCE)
        # Bounds that no enabled rule reads are no reason to evaluate a sample.
        b = self.policy.gpu_bounds
        self._bounds = (b.utilization, b.memory_bytes, b.power_watts) if sections & GPU_BOUNDS else None
        self._learn_ips = self.context.learn_pod_ips

    # --- the API -------------------------------------------------------------------------------

    @property
    def rules(self) -> tuple[str, ...]:
        """The sample rules this policy enables, in evaluation order (`sensor.silent` always runs in tick)."""
        return tuple(r.name for r in self._chain)

    @property
    def occurrences(self) -> int:
        """Violations (occurrences) confirmed in the job so far."""
        return self._occurrences

    def observe(self, sample: Sample) -> list[Decision]:
        """Evaluate one sample of one pod; return the decisions it leads to (usually none)."""
        now = self.clock()
        # The sample's fields, read from its field dict: cheaper than a pydantic model's attributes
        # (see `Window.push`), and this runs for every sample.
        fields = sample.__dict__
        pod = self._pods.get(fields["pod"])
        if pod is None:
            pod = self._pods[fields["pod"]] = _Pod(Window(self.context.mining, self._bounds), now)
        pod.last_heard = now
        window = pod.window
        window.push(sample)
        connections = fields["connections"]
        # A pod's addresses rarely change: learn from its first samples, then from every 16th.
        if (
            self._learn_ips
            and connections
            and (window.samples < 4 or window.samples % 16 == 0)
            and not self._learned_locals.issuperset(map(_LOCAL, connections))
        ):
            self._learn(sample)
        remember = self._fast and not pod.tracks
        if (
            remember
            # The fast path: is the sample clean, nothing in it a rule could find?
            # - its numbers: no GPU above a bound, no full mining window, seq not going back;
            and not window.over_bounds
            and not (window.full_gpus and self._window_on)
            and not (self._sequence_on and window.previous_seq is not None and fields["seq"] < window.previous_seq)
        ):
            # - what it holds: the same as the last sample proven clean (the common case: one
            #   comparison), or else the same listening ports as when the pod's known set was
            #   filled, and every process, GPU process and connection in that set.
            processes = fields["processes"]
            listening = fields["listening"]
            gpu_keys = [_PROCESS_KEY(p) for g in fields["gpus"] for p in g.processes]
            # The same sections (list objects) as the last sample proven clean: a `SampleReader`
            # hands a pod's unchanged sections on, so this is the common case; lists in frozen
            # samples do not change.
            same = pod.same
            if same is not None and processes is same[0] and listening is same[1] and gpu_keys == same[3]:
                if connections is same[2]:
                    return []
                # Only the connections changed (the usual change: one opened or closed): judge
                # just them, under the same ports (`same` is forgotten when they change).
                if self._harmless(connections, pod.known):
                    pod.same = (processes, listening, connections, gpu_keys)
                    return []
            fingerprint = [*map(_FIELDS, processes), *map(_FIELDS, listening), *map(_FIELDS, connections), *gpu_keys]
            if fingerprint == pod.clean:
                # Remember these lists for the identity test when they look shared (a section is
                # one of the remembered ones: the reader re-parsed only what changed) and, so that
                # a pod whose sections all changed at once settles again, every 16th sample.
                # Not always: holding a sample's lists makes the engine the one to free the last
                # ones (about 40% of a clean sample's cost when nothing is ever shared).
                if (
                    same is not None
                    and (processes is same[0] or listening is same[1] or connections is same[2])
                ) or not window.samples % 16:
                    pod.same = (processes, listening, connections, gpu_keys)
                return []
            known = pod.known
            if (
                (tuple(map(_PORT, listening)) if listening else ()) == pod.ports
                and known.issuperset(
                    chain(
                        map(_PROCESS_KEY, processes),
                        map(_GPU_PROCESS_KEY, chain.from_iterable(map(_GPU_PROCESSES, fields["gpus"]))),
                    )
                )
                and self._harmless(connections, known)
            ):
                # Copies of the field dicts: compact, and the sample's objects are not kept alive.
                pod.clean = [f.copy() if type(f) is dict else f for f in fingerprint]
                pod.same = (processes, listening, connections, gpu_keys)
                return []
        inp = RuleInput(
            sample=sample, window=window, policy=self.policy, now=now, job_ips=self._job_ips, quiet=self._quiet
        )
        findings: list[Finding] | None = None
        active = active_sections(inp)
        for sections, check in self._checks if active else ():
            if not sections & active:
                continue
            found = check(inp)
            if found:
                if findings is None:
                    findings = list(found)
                else:
                    findings.extend(found)
        if remember:
            self._remember(pod, inp)
        if findings is None and not pod.tracks:
            return []
        return self._follow(sample.pod, pod, findings or [], sample.ts)

    def tick(self, now: float | None = None) -> list[Decision]:
        """Judge the time: pods gone silent, and standing violations whose action changes as they persist."""
        if now is None:
            now = self.clock()
        out: list[Decision] = []
        silence = self.monitoring.sensor_silence_seconds
        for name, pod in self._pods.items():
            if now - pod.last_heard < silence:
                continue  # not silent (`sensor_silent` would find nothing): the common case
            finding = sensor_silent(pod.last_heard, now, silence)
            key = (SENSOR_SILENT, "")
            track = pod.tracks.get(key)
            if finding is not None:
                if track is None:
                    track = pod.tracks[key] = _Track(
                        RULES[SENSOR_SILENT], "", pod.last_heard, now, finding.evidence, count=1
                    )
                    out.append(self._confirm(name, track, now))
                else:
                    track.last_seen = now
                    track.evidence = finding.evidence
        out.extend(self._rejudge(now))
        return out

    def expect(self, pod: str, now: float | None = None) -> None:
        """Start watching a pod before its first sample, so that a sensor that never reports is silent."""
        if pod not in self._pods:
            self._pods[pod] = _Pod(Window(self.context.mining, self._bounds), self.clock() if now is None else now)

    def forget(self, pod: str, now: float | None = None) -> list[Decision]:
        """Stop watching a pod (it was deleted); its standing violations are cleared."""
        state = self._pods.pop(pod, None)
        if state is None:
            return []
        when = self.clock() if now is None else now
        return [self._decision("cleared", pod, t, when) for t in state.tracks.values() if t.standing]

    def standing(self) -> list[Violation]:
        """The violations standing now, in the order they were confirmed."""
        out = [self._violation(name, t) for name, pod in self._pods.items() for t in pod.tracks.values() if t.standing]
        return sorted(out, key=lambda v: v.occurrence)

    # --- internals -----------------------------------------------------------------------------

    def _remember(self, pod: _Pod, inp: RuleInput) -> None:
        """After a sample was evaluated rule by rule: remember what in it is harmless, for the fast path.

        What is remembered stays harmless: the policy does not change and the job's pod IPs only
        grow (a quiet remote stays quiet); inbound depends on the ports listened on, and the set is
        emptied when they change.
        """
        sample = inp.sample
        policy = self.policy
        listening = tuple(map(_PORT, sample.listening))
        known = pod.known
        if listening != pod.ports or len(known) >= KNOWN_LIMIT:
            known.clear()
            pod.clean = pod.same = None
            # A port that is not exempt is a finding: such a pod is not clean, whatever it holds.
            pod.ports = listening if all(policy.listen_exempt(port) for port in listening) else None
        for p in sample.processes:
            f = policy.process(p.name, p.cmdline)
            if f.denied is None and f.tunnel is None and not f.unexpected:
                known.add(_PROCESS_KEY(p))
        for g in sample.gpus:
            for gp in g.processes:
                f = policy.process(gp.name, gp.cmdline)
                if f.denied is None and not f.gpu_unexpected:
                    known.add(_GPU_PROCESS_KEY(gp))
        if sample.connections:
            # The network rules read only the outbound connections: the others are no finding.
            suspects = {id(c) for c, _ in outbound(inp)}
            for c in sample.connections:
                if id(c) not in suspects:
                    known.add(_CONNECTION_KEY(c))

    def _harmless(self, connections: list[Connection], known: set[tuple[str, ...]]) -> bool:
        """Whether no rule can find anything in these connections (the pod's ports as when `known` was filled).

        A connection is harmless when `outbound` passes it over before reading anything else
        (`passed_over`: not up or being attempted, or a quiet remote), which depends on nothing the
        pod listens on, or when it is known harmless. The first keeps the churn of connections (a
        new one to the object store from a new ephemeral port, or one in TIME_WAIT) on the fast path.
        """
        quiet = self._quiet
        # Cheapest first: strings keep their hash, a key tuple is hashed anew.
        return all(passed_over(c, quiet) or _CONNECTION_KEY(c) in known for c in connections)

    def _learn(self, sample: Sample) -> None:
        learned = self._learned_locals
        for c in sample.connections:
            if c.local in learned:
                continue
            learned.add(c.local)
            ep = self.policy.endpoints.get(c.local)
            if ep is not None and not ep.ip.is_loopback and not ep.ip.is_unspecified:
                self._job_ips.add(ep.ip.packed)

    def _follow(self, name: str, pod: _Pod, findings: list[Finding], ts: float) -> list[Decision]:
        """Debounce, de-duplicate and decide, given this sample's findings for the pod."""
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
                severity=track.rule.severity,
            ),
        )

    def _rejudge(
        self, now: float, pod: str | None = None, skip: AbstractSet[tuple[str, str]] = frozenset()
    ) -> list[Decision]:
        """Re-judge the action of every standing violation (except `pod`'s keys in `skip`)."""
        if not self._enforcement.escalation:
            return []
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
            severity=t.rule.severity,
            pod=pod,
            identity=t.identity,
            first_seen=t.first_seen,
            last_seen=t.last_seen,
            evidence=t.evidence,
            occurrence=t.occurrence,
        )

    def _decision(self, kind: DecisionKind, pod: str, t: _Track, now: float) -> Decision:
        return Decision(kind, self._violation(pod, t), t.action, self._dry_run, now)
