"""State that survives: the engine's snapshot restores what it must, and a policy change keeps it."""

from __future__ import annotations

import json

import pytest

from trainguard.api.v1alpha1 import Monitoring
from trainguard.detection import Engine
from trainguard.detection.engine import ManualClock

from .samples import CTX, POD, T0, conn, listen, policy, sample

LADDER = {
    "action": "Alert",
    "escalation": [{"action": "Quarantine", "occurrences": 2}],
    "debounce": {"samples": 3},
}


def feed(engine: Engine, clock: ManualClock, samples: list, pod: str = POD) -> list:
    out = []
    for s in samples:
        clock.set(s.ts)
        out.extend(engine.observe(pod, s))
    return out


def test_a_restored_engine_carries_on_as_the_first_would() -> None:
    pol = policy(enforcement=LADDER)
    clock = ManualClock(T0)
    first = Engine(pol, CTX, clock, Monitoring())
    # One standing violation (a listener), one pending at 2 of 3 samples (undeclared egress).
    feed(first, clock, [sample(t=i, listening=[listen(8081)]) for i in range(3)])
    both = [sample(t=3 + i, listening=[listen(8081)], connections=[conn("192.0.2.9:8443")]) for i in range(2)]
    feed(first, clock, both)
    doc = json.loads(json.dumps(first.snapshot()))
    assert len(json.dumps(doc)) < 4096
    assert doc["occurrences"] == 1 and doc["pods"][POD]["seq"] == 4
    restored = Engine.restore(doc, pol, CTX, clock, Monitoring())
    assert [v.key for v in restored.standing()] == [v.key for v in first.standing()]
    # The third violating sample confirms the pending one on both, and escalation counts carry on.
    third = sample(t=5, listening=[listen(8081)], connections=[conn("192.0.2.9:8443")])
    a = feed(first, clock, [third])
    b = feed(restored, clock, [third])
    assert [(d.kind, d.violation.rule, d.action) for d in a] == [(d.kind, d.violation.rule, d.action) for d in b]
    assert ("new", "net.egress.undeclared", "Quarantine") in [(d.kind, d.violation.rule, d.action) for d in b]
    assert restored.snapshot() == first.snapshot()


def test_a_policy_change_applies_to_the_running_engine_without_losing_state() -> None:
    clock = ManualClock(T0)
    engine = Engine(policy(enforcement={"debounce": {"samples": 3}}), CTX, clock, Monitoring())
    feed(engine, clock, [sample(t=i, listening=[listen(8081)]) for i in range(3)])
    [standing] = engine.standing()
    # A stronger action for the same violation: re-judged at once, the violation kept (same occurrence).
    decisions = engine.update(policy=policy(enforcement={"action": "Quarantine", "debounce": {"samples": 3}}))
    assert [(d.kind, d.action, d.violation.occurrence) for d in decisions] == [("updated", "Quarantine", 1)]
    # The new policy declares the port: the violation clears after the debounce of clean samples.
    engine.update(policy=policy(network={"listenPorts": [8081]}, enforcement={"debounce": {"samples": 2}}))
    out = feed(engine, clock, [sample(t=3 + i, listening=[listen(8081)]) for i in range(2)])
    assert [(d.kind, d.violation.key) for d in out] == [("cleared", standing.key)]
    assert engine.occurrences == 1


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"version": 9}, "version"),
        ({"pods": {POD: {"tracks": [{"rule": "no.such", "identity": "", "firstSeen": 0, "lastSeen": 0, "count": 1}]}}},
         "unknown rule"),
        ({"occurrences": -1}, "occurrences"),
    ],
)  # fmt: skip
def test_a_document_that_is_not_a_state_is_refused_by_name(doc: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Engine.restore(doc, policy(), CTX)
