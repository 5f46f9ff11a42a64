"""The engine's steady-state fast path never changes a decision.

The fast path proves a sample clean from what the engine has already judged harmless (see
`Engine`); the reference is the same engine evaluating every sample rule by rule
(`fast_path=False`). Random sequences of samples, drawn from small pools so that a pod's samples
repeat (the steady state) and then change (a process, a listener going away under an inbound
connection, a GPU above a bound, a saturated window, seq going back), must lead to the same
decisions, in the same order.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainguard.api.sample import Sample
from trainguard.api.v1alpha1 import Monitoring, Policy
from trainguard.detection.context import DCGM_TENSOR_ACTIVE, EngineContext, MiningThresholds
from trainguard.detection.engine import Engine, ManualClock
from trainguard.detection.reader import SampleReader
from trainguard.detection.rules import RuleInput, active_sections
from trainguard.detection.violation import Decision
from trainguard.detection.window import Window

from .samples import GIB, T0, conn, gpu, listen, policy, proc

PODS = ("agents/worker-0", "agents/worker-1")
POD_IPS = ("10.244.1.10", "10.244.1.11")

PROCESSES = [
    proc(1, "torchrun", "torchrun train.py", ppid=0),
    proc(27, "python3", "python3 -u train.py"),
    proc(28, "python3", "python3 -u train.py --local-rank 1"),
    proc(900, "trainguard", "trainguard sensor", ppid=0),
    proc(31, "pip", "pip install x"),
    proc(32, "xmrig", "./xmrig -o pool:3333"),
    proc(33, "ssh", "ssh -R 2222:localhost:22 u@192.0.2.1"),
    proc(34, "bash", "bash"),
]
GPU_PROCESSES = [
    {"pid": 4000, "name": "python3", "cmdline": "python3 -u train.py"},
    {"pid": 4001, "name": "trainguard", "cmdline": "trainguard sensor"},
    {"pid": 4002, "name": "", "cmdline": ""},
    {"pid": 4003, "name": "xmrig", "cmdline": "xmrig"},
]
PORTS = [9400, 29500, 8081, 41000, 6006]
#: (remote, local port, state, proto): allowed, intra-job, DNS, undeclared, tunnels, attempts,
#: closed, inbound on a port that is listened on only sometimes, loopback, unparseable, churn.
CONNECTIONS = [
    ("203.0.113.40:443", 44100, "ESTABLISHED", "tcp"),
    ("10.244.1.11:41000", 52000, "ESTABLISHED", "tcp"),
    ("10.96.0.10:53", 33000, "ESTABLISHED", "udp"),
    ("198.51.100.7:8443", 44200, "ESTABLISHED", "tcp"),
    ("198.51.100.7:8443", 44201, "SYN_SENT", "tcp"),
    ("192.0.2.1:22", 44300, "SYN_SENT", "tcp"),
    ("192.0.2.9:3333", 44400, "ESTABLISHED", "tcp"),
    ("198.51.100.9:48812", 8081, "ESTABLISHED", "tcp"),
    ("198.51.100.9:48813", 9400, "ESTABLISHED", "tcp"),
    ("198.51.100.8:443", 44500, "TIME_WAIT", "tcp"),
    ("127.0.0.1:6379", 44600, "ESTABLISHED", "tcp"),
    ("not-an-address", 44700, "ESTABLISHED", "tcp"),
    # The churn of connections: known remotes from new ephemeral ports, one closing down, and
    # ones that only look like churn (a tunnel port on an allowed address, a new inbound remote).
    ("203.0.113.40:443", 44101, "ESTABLISHED", "tcp"),
    ("10.96.0.10:53", 33001, "ESTABLISHED", "udp"),
    ("198.51.100.7:8443", 44202, "TIME_WAIT", "tcp"),
    ("203.0.113.40:22", 44102, "ESTABLISHED", "tcp"),
    ("198.51.100.9:48814", 8081, "ESTABLISHED", "tcp"),
]
GPU_READINGS = [
    (0.5, 60 * GIB, 400.0),  # training
    (0.97, 5 * GIB, 300.0),  # a miner's flat saturation, low memory
    (0.99, 75 * GIB, 690.0),  # above the utilization bound
    (0.6, 79.5 * GIB, 300.0),  # above the memory bound
    (0.7, 60 * GIB, 720.0),  # above the power bound
]

POLICY = policy(
    processes={"allowed": ["python*", "torchrun", "bash"]},
    network={
        "egress": [{"cidr": "203.0.113.0/24", "ports": [{"port": 443}]}],
        "listenPorts": [29500, 6006],
    },
    gpu={
        "allowedProcesses": ["python*"],
        "maxUtilization": 0.98,
        "maxMemoryBytes": 79 * GIB,
        "maxPowerWatts": 700,
    },
)


#: A clean sample: the trainer, the sensor, an allowed GPU process, a declared and an exempt
#: listener, allowed, DNS, inbound (on the sensor's port) and closed connections.
CLEAN: dict[str, Any] = {
    "processes": [0, 1, 3],
    "gpu": [0],
    "reading": 0,
    "ports": [9400, 29500],
    "connections": [0, 2, 8, 9],
}
#: One change to a clean sample (each pool index, set or removed).
changes = st.one_of(
    st.tuples(st.just("processes"), st.sampled_from(range(len(PROCESSES)))),
    st.tuples(st.just("gpu"), st.sampled_from(range(len(GPU_PROCESSES)))),
    st.tuples(st.just("reading"), st.sampled_from(range(len(GPU_READINGS)))),
    st.tuples(st.just("ports"), st.sampled_from(PORTS)),
    st.tuples(st.just("connections"), st.sampled_from(range(len(CONNECTIONS)))),
)


def changed(shape: dict[str, Any], edits: list[tuple[str, int]]) -> dict[str, Any]:
    out = {k: (list(v) if isinstance(v, list) else v) for k, v in shape.items()}
    for field, value in edits:
        if field == "reading":
            out[field] = value
        elif value in out[field]:
            out[field].remove(value)
        else:
            out[field].append(value)
    return out


#: What a sample holds apart from time and seq: the clean sample with a few changes.
shapes = st.lists(changes, min_size=1, max_size=2).map(lambda edits: changed(CLEAN, edits))

#: One step: which pod, which shape of the pool it reports (beyond the pool: the clean one, so
#: that pods settle into the steady state), how many samples in a row, and whether seq goes back
#: first (the sensor restarted).
steps = st.lists(
    st.tuples(
        st.sampled_from(range(len(PODS))),
        st.integers(min_value=0, max_value=2),
        st.integers(min_value=1, max_value=4),
        st.integers(min_value=0, max_value=15).map(lambda n: n == 0),
    ),
    min_size=1,
    max_size=30,
)


def build(pod: int, shape: dict[str, Any], t: int, seq: int) -> Sample:
    util, memory, power = GPU_READINGS[shape["reading"]]
    return Sample.model_validate(
        {
            "ts": T0 + t,
            "pod": PODS[pod],
            "seq": seq,
            "gpus": [gpu(0, util=util, memory=memory, power=power, procs=[GPU_PROCESSES[i] for i in shape["gpu"]])],
            "processes": [PROCESSES[i] for i in shape["processes"]],
            "listening": [listen(p) for p in shape["ports"]],
            "connections": [
                conn(CONNECTIONS[i][0], local_port=CONNECTIONS[i][1], state=CONNECTIONS[i][2], proto=CONNECTIONS[i][3])
                | {"local": f"{POD_IPS[pod]}:{CONNECTIONS[i][1]}"}
                for i in shape["connections"]
            ],
            "dcgm": {"DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": 0.01},
        }
    )


def through_reader(samples: list[Sample]) -> list[Sample]:
    """The samples as a `SampleReader` gives them from their JSON lines: a pod's unchanged
    sections are the list objects of its previous sample."""
    reader = SampleReader()
    out = [reader.read(s.model_dump_json(by_alias=True)) for s in samples]
    assert out == samples
    return out


def run(pol: Policy, ctx: EngineContext, samples: list[Sample], fast: bool) -> list[Decision]:
    clock = ManualClock(T0)
    engine = Engine(pol, ctx, clock=clock, monitoring=Monitoring(sensor_silence_seconds=5), fast_path=fast)
    out: list[Decision] = []
    for s in samples:
        clock.set(s.ts)
        out.extend(engine.tick(s.ts))
        out.extend(engine.observe(s))
    out.extend(engine.tick(samples[-1].ts + 10))
    return out


@settings(max_examples=200, deadline=None)
@given(
    st.lists(shapes, min_size=1, max_size=2),
    steps,
    st.integers(min_value=1, max_value=3),
    st.tuples(st.booleans(), st.booleans(), st.booleans()),
)
def test_fast_path_makes_the_same_decisions_as_rule_by_rule_evaluation(
    pool: list[dict[str, Any]],
    sequence: list[tuple[int, int, int, bool]],
    debounce: int,
    switches: tuple[bool, bool, bool],
) -> None:
    learn, escalate, read = switches
    enforcement: dict[str, Any] = {"debounce": {"samples": debounce}}
    if escalate:
        enforcement["escalation"] = [{"action": "Quarantine", "occurrences": 2}]
    pol = POLICY.model_copy(update={"enforcement": policy(enforcement=enforcement).enforcement})
    # A short mining window, so that saturated runs fill it within a test's samples.
    ctx = EngineContext(learn_pod_ips=learn, mining=MiningThresholds(window_samples=3))
    samples: list[Sample] = []
    seqs = [0] * len(PODS)
    for pod, which, repeat, restart in sequence:
        if restart:
            seqs[pod] = 0
        for _ in range(repeat):
            seqs[pod] += 1
            samples.append(build(pod, pool[which] if which < len(pool) else CLEAN, len(samples), seqs[pod]))
    # Read from JSON lines (shared sections: the fast path's identity test) or freshly built (its
    # comparison of fields), against rule-by-rule evaluation.
    fast = run(pol, ctx, through_reader(samples) if read else samples, fast=True)
    assert fast == run(pol, ctx, samples, fast=False)


#: Every single change to the clean sample.
SINGLE_CHANGES = [
    *(("processes", i) for i in range(len(PROCESSES))),
    *(("gpu", i) for i in range(len(GPU_PROCESSES))),
    *(("reading", i) for i in range(len(GPU_READINGS))),
    *(("ports", p) for p in PORTS),
    *(("connections", i) for i in range(len(CONNECTIONS))),
]


@pytest.mark.parametrize("read", [False, True], ids=["built", "read"])
@pytest.mark.parametrize("debounce", [1, 2])
@pytest.mark.parametrize("change", SINGLE_CHANGES, ids=[f"{f}-{v}" for f, v in SINGLE_CHANGES])
def test_every_single_change_after_the_steady_state_is_judged_alike(
    change: tuple[str, int], debounce: int, read: bool
) -> None:
    # Clean, then the change, clean again long enough to clear it, then the change again: what
    # the fast path learned from the first time must not hide the second.
    other = changed(CLEAN, [change])
    pattern = [CLEAN] * 3 + [other] * 3 + [CLEAN] * 4 + [other] * 4 + [CLEAN] * 4 + [other] * 4
    samples = [build(0, shape, t, t + 1) for t, shape in enumerate(pattern)]
    pol = POLICY.model_copy(update={"enforcement": policy(enforcement={"debounce": {"samples": debounce}}).enforcement})
    ctx = EngineContext(mining=MiningThresholds(window_samples=3))
    fast = run(pol, ctx, through_reader(samples) if read else samples, fast=True)
    assert fast == run(pol, ctx, samples, fast=False)


def test_a_listener_going_away_makes_an_inbound_connection_outbound() -> None:
    # Known harmless as inbound while 8081 is listened on; undeclared egress once it is not.
    shape = {"processes": [1], "gpu": [], "reading": 0, "ports": [8081], "connections": [7]}
    listening = [build(0, shape, t, t) for t in range(3)]
    closed = [build(0, shape | {"ports": []}, t, t) for t in range(3, 6)]
    pol = policy(network={"listenPorts": [8081]}, enforcement={"debounce": {"samples": 1}})
    fast = run(pol, EngineContext(), listening + closed, fast=True)
    assert [(d.kind, d.violation.rule) for d in fast][:1] == [("new", "net.egress.undeclared")]
    assert fast == run(pol, EngineContext(), listening + closed, fast=False)


def test_a_sample_like_the_last_clean_one_runs_no_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every sample freshly built (no object shared with the one before, as a parser gives them):
    # once the pod's contents are known harmless, a sample holding the same is clean at one
    # comparison, and no rule runs, whatever its GPU readings and time.
    pol = POLICY
    engine = Engine(pol, EngineContext(), clock=ManualClock(T0))
    for t in range(3):
        assert engine.observe(build(0, CLEAN, t, t + 1)) == []

    def no_rules(*_: object) -> int:
        raise AssertionError("a rule ran on a clean sample")

    monkeypatch.setattr("trainguard.detection.engine.active_sections", no_rules)
    for t in range(3, 10):
        sample = build(0, CLEAN, t, t + 1)
        sample = sample.model_copy(update={"processes": [p.model_copy(update={"pid": t}) for p in sample.processes]})
        # A field no rule reads (a pid) differs from the last clean sample: the known set still
        # proves it clean, and it becomes the one to compare with.
        assert engine.observe(sample) == []
    # Anything a rule reads that is not known harmless goes the long way.
    with pytest.raises(AssertionError, match="a rule ran"):
        engine.observe(build(0, changed(CLEAN, [("processes", 4)]), 10, 11))


@pytest.mark.parametrize("read", [False, True], ids=["built", "read"])
@pytest.mark.parametrize(
    ("index", "judged"),
    [(12, False), (13, False), (14, False), (3, True), (15, True), (16, True)],
    ids=lambda v: ("judged" if v else "clean") if isinstance(v, bool) else f"{CONNECTIONS[v][0]}-{CONNECTIONS[v][2]}",
)
def test_the_churn_of_connections_to_quiet_remotes_runs_no_rule(
    monkeypatch: pytest.MonkeyPatch, index: int, judged: bool, read: bool
) -> None:
    # Once the allowed object store and the DNS resolver are judged (quiet), a new connection to
    # them from a new ephemeral port, or any connection closing down, is clean without a rule, and
    # so is the sample after it; a new remote, a tunnel port on an allowed address, or a new
    # inbound peer is judged rule by rule. Read from lines, only the connections section changes
    # (the identity path judges just it).
    shapes = [CLEAN] * 3 + [changed(CLEAN, [("connections", index)]), CLEAN]
    samples = [build(0, shape, t, t + 1) for t, shape in enumerate(shapes)]
    if read:
        samples = through_reader(samples)
        assert samples[3].processes is samples[2].processes
        assert samples[3].connections is not samples[2].connections
    engine = Engine(POLICY, EngineContext(), clock=ManualClock(T0))
    for s in samples[:3]:
        assert engine.observe(s) == []
    ran: list[object] = []

    def counted(inp: RuleInput) -> int:
        ran.append(inp.sample)
        return active_sections(inp)

    monkeypatch.setattr("trainguard.detection.engine.active_sections", counted)
    engine.observe(samples[3])
    assert (samples[3] in ran) == judged
    if not judged:
        assert engine.observe(samples[4]) == []
        assert ran == []


def test_the_last_clean_sample_is_forgotten_when_the_known_set_is_emptied() -> None:
    # Clean with 8081 listened on (an inbound connection on it is harmless), then the listener
    # changes (the known set is emptied and learned again), then the very first contents again
    # but without the listener: the connection is outbound now, an undeclared egress; the same
    # contents as an earlier clean sample must not pass for clean.
    shape = {"processes": [1], "gpu": [], "reading": 0, "ports": [8081, 9400], "connections": [7]}
    pattern = [shape] * 3 + [shape | {"ports": [8081]}] * 2 + [shape | {"ports": [9400]}] * 3 + [shape] * 2
    samples = [build(0, s, t, t + 1) for t, s in enumerate(pattern)]
    pol = policy(network={"listenPorts": [8081]}, enforcement={"debounce": {"samples": 1}})
    reference = run(pol, EngineContext(), samples, fast=False)
    assert ("new", "net.egress.undeclared") in [(d.kind, d.violation.rule) for d in reference]
    assert run(pol, EngineContext(), samples, fast=True) == reference
    # Read from lines, the last two share the first three's connection list (the reader keeps
    # only the previous line's sections, and those changed in between: so does the engine's
    # memory of the last clean sample).
    read = through_reader(samples)
    assert read[-1].connections is read[-2].connections
    assert run(pol, EngineContext(), read, fast=True) == reference


def test_a_sample_sharing_the_last_clean_ones_sections_is_clean_at_identity_tests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Samples read from lines share a pod's unchanged sections; once they are proven clean, a
    # sample with the same lists runs no rule and compares no field, whatever its GPU readings.
    engine = Engine(POLICY, EngineContext(), clock=ManualClock(T0))
    reader = SampleReader()

    def line(t: int, shape: dict[str, Any] = CLEAN) -> str:
        return build(0, shape | {"reading": t % 2}, t, t + 1).model_dump_json(by_alias=True)

    for t in range(3):
        assert engine.observe(reader.read(line(t))) == []

    def no_rules(*_: object) -> int:
        raise AssertionError("a rule ran on a clean sample")

    monkeypatch.setattr("trainguard.detection.engine.active_sections", no_rules)
    monkeypatch.setattr("trainguard.detection.engine._FIELDS", no_rules)  # no fingerprint either
    for t in range(3, 10, 2):  # reading 1: a saturated GPU, within its bounds
        assert engine.observe(reader.read(line(t))) == []
    # A changed section goes the long way.
    with pytest.raises(AssertionError, match="a rule ran"):
        engine.observe(reader.read(line(10, changed(CLEAN, [("processes", 4)]))))


@given(st.lists(st.one_of(st.none(), st.floats(min_value=0.0, max_value=1.0)), min_size=1, max_size=12))
def test_the_tensor_mean_is_that_of_the_window_and_none_unless_every_sample_had_it(values: list[float | None]) -> None:
    window = Window(MiningThresholds(window_samples=4))
    for i, v in enumerate(values):
        window.push(Sample(ts=T0 + i, pod=PODS[0], seq=i, dcgm={} if v is None else {DCGM_TENSOR_ACTIVE: v}))
        last = values[max(0, i - 3) : i + 1]
        expected = None if None in last else sum(x for x in last if x is not None) / len(last)
        mean = window.tensor_active_mean
        assert mean == pytest.approx(expected) if expected is not None else mean is None
        assert window.tensor_active_mean == mean  # read twice in one sample: the same


def test_the_last_clean_sample_is_kept_as_copies_of_its_fields() -> None:
    # The fingerprint the fast path compares with holds copies of the clean sample's field dicts
    # (equal, not the same objects), so a later sample, equal but new, is clean at one comparison,
    # and the clean sample's objects are not kept alive.
    engine = Engine(POLICY, EngineContext(), clock=ManualClock(T0))
    first = [build(0, CLEAN, t, t + 1) for t in range(3)]
    for s in first:
        assert engine.observe(s) == []
    clean = engine._pods[PODS[0]].clean
    assert clean is not None
    fields = [vars(m) for s in first for m in (*s.processes, *s.listening, *s.connections)]
    assert not any(f is c for f in fields for c in clean)
    assert engine.observe(build(0, CLEAN, 3, 4)) == []
    assert engine._pods[PODS[0]].clean is clean  # the same contents: nothing new to remember


def test_addresses_learned_late_are_learned_once_known_ones_are_skipped() -> None:
    # The engine learns pod IPs from local addresses in a pod's first samples and every 16th after;
    # one it has seen is skipped at a set lookup, one it has not is learned, however late it comes.
    ctx = EngineContext(learn_pod_ips=True)
    engine = Engine(POLICY, ctx, clock=ManualClock(T0))
    for t in range(31):
        engine.observe(build(0, CLEAN, t, t + 1))
    learned = set(engine._learned_locals)
    assert learned == {f"{POD_IPS[0]}:{CONNECTIONS[i][1]}" for i in CLEAN["connections"]}
    moved = build(0, CLEAN, 31, 32)  # the 32nd sample: a learning one
    locals_ = [c.model_copy(update={"local": f"10.244.9.9:{41000 + k}"}) for k, c in enumerate(moved.connections)]
    moved = moved.model_copy(update={"connections": locals_})
    engine.observe(moved)
    assert engine._learned_locals == learned | {c.local for c in moved.connections}
