"""The engine: debounce, de-duplication, clearing, escalation, dry run, the sensor's silence."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from trainguard.api.v1alpha1 import Monitoring, Policy
from trainguard.detection import EngineContext
from trainguard.detection.engine import Engine, ManualClock
from trainguard.detection.violation import Decision

from .samples import CTX, POD, T0, conn, listen, policy, proc, sample


def engine(pol: Policy | None = None, **monitoring: Any) -> tuple[Engine, ManualClock]:
    clock = ManualClock(T0)
    return Engine(pol or Policy(), CTX, clock=clock, monitoring=Monitoring.model_validate(monitoring)), clock


def feed(e: Engine, clock: ManualClock, samples: list[Any]) -> list[Decision]:
    out: list[Decision] = []
    for s in samples:
        clock.set(s.ts)
        out.extend(e.tick(s.ts))
        out.extend(e.observe(s.pod, s))
    return out


def kinds(decisions: list[Decision]) -> list[tuple[str, str, float]]:
    return [(d.kind, d.violation.rule, d.time - T0) for d in decisions]


LISTENER = listen(8081)


def listener_samples(pattern: str) -> list[Any]:
    """One sample a second; '1' has an undeclared listener on 8081, '0' does not."""
    return [sample(t=i, listening=[LISTENER] if c == "1" else []) for i, c in enumerate(pattern)]


def test_debounce_n_consecutive_samples() -> None:
    e, clock = engine(policy(enforcement={"debounce": {"samples": 3}}))
    assert kinds(feed(e, clock, listener_samples("1101110"))) == [("new", "net.listen.undeclared", 5)]


def test_debounce_seconds_whichever_comes_first() -> None:
    e, clock = engine(policy(enforcement={"debounce": {"samples": 10, "seconds": 2}}))
    # Samples 0, 2, 4 s apart... here at 1 Hz: seen at 0, 1, 2 -> 2 s stood at the third sample.
    assert kinds(feed(e, clock, listener_samples("111"))) == [("new", "net.listen.undeclared", 2)]


def test_standing_violation_is_reported_once_then_cleared_after_the_debounce_of_clean_samples() -> None:
    e, clock = engine(policy(enforcement={"debounce": {"samples": 2}}))
    decisions = feed(e, clock, listener_samples("1111111" + "0" + "1" + "00" + "0"))
    # A single clean sample (7) does not clear it; two do (9, 10).
    assert kinds(decisions) == [("new", "net.listen.undeclared", 1), ("cleared", "net.listen.undeclared", 10)]
    cleared = decisions[-1].violation
    assert cleared.first_seen == T0 and cleared.last_seen == T0 + 8
    assert e.standing() == []


def test_a_violation_that_comes_back_is_a_new_occurrence() -> None:
    e, clock = engine(policy(enforcement={"debounce": {"samples": 1}}))
    decisions = feed(e, clock, listener_samples("1101"))
    assert kinds(decisions) == [
        ("new", "net.listen.undeclared", 0),
        ("cleared", "net.listen.undeclared", 2),
        ("new", "net.listen.undeclared", 3),
    ]
    assert [d.violation.occurrence for d in decisions] == [1, 1, 2]


def test_dedup_key_is_pod_rule_identity() -> None:
    e, clock = engine(policy(enforcement={"debounce": {"samples": 1}}))
    s = [
        sample(t=0, listening=[listen(8081), listen(8082)]),
        sample(t=0, pod="agents/worker-1", listening=[listen(8081)]),
        sample(t=1, listening=[listen(8081), listen(8082), listen(8081, proto="tcp6", address="::")]),
    ]
    decisions = feed(e, clock, s)
    assert sorted((d.violation.pod, d.violation.identity) for d in decisions) == [
        ("agents/worker-0", "port 8081"),
        ("agents/worker-0", "port 8082"),
        ("agents/worker-1", "port 8081"),
    ]
    assert len(e.standing()) == 3


def test_conclusive_rules_skip_the_debounce() -> None:
    e, clock = engine(policy(enforcement={"debounce": {"samples": 5}}))
    s = sample(t=0, processes=[proc(1, "python3"), proc(9, "xmrig", "./xmrig -o pool:3333")])
    assert kinds(feed(e, clock, [s])) == [("new", "process.denied", 0)]


def test_violation_fields() -> None:
    e, clock = engine(policy(enforcement={"debounce": {"samples": 1}, "dryRun": True}))
    [d] = feed(e, clock, [sample(t=3, connections=[conn("192.0.2.9:8443", pid=27)])])
    v = d.violation
    assert (v.rule, v.severity, v.pod, v.identity) == ("net.egress.undeclared", "High", POD, "192.0.2.9:8443")
    assert v.first_seen == v.last_seen == T0 + 3
    assert v.evidence["remote"] == "192.0.2.9:8443" and v.evidence["process"] == "python3"
    assert d.action == "Alert" and d.dry_run is True
    as_json = d.to_dict()
    assert as_json["firstSeen"] == "2026-01-01T00:00:03.000Z" and as_json["dryRun"] is True


# --- escalation -------------------------------------------------------------------------------


def test_escalation_last_step_that_holds_wins() -> None:
    pol = policy(
        enforcement={
            "action": "Alert",
            "debounce": {"samples": 1},
            "escalation": [
                {"action": "Quarantine", "minSeverity": "High"},
                {"action": "Suspend", "minSeverity": "Critical"},
            ],
        }
    )
    e, clock = engine(pol)
    d = feed(e, clock, [sample(t=0, listening=[listen(8081)], processes=[proc(9, "xmrig")])])
    assert {(x.violation.rule, x.action) for x in d} == {
        ("net.listen.undeclared", "Quarantine"),
        ("process.denied", "Suspend"),
    }


def test_escalation_by_persistence_is_judged_by_tick_and_reported_as_updated() -> None:
    pol = policy(
        enforcement={"debounce": {"samples": 1}, "escalation": [{"action": "Quarantine", "persistsSeconds": 30}]}
    )
    e, clock = engine(pol, sensorSilenceSeconds=3600)
    d = feed(e, clock, listener_samples("1"))
    assert [(x.kind, x.action) for x in d] == [("new", "Alert")]
    assert e.tick(T0 + 29) == []
    [up] = e.tick(T0 + 30)
    assert (up.kind, up.action, up.violation.rule) == ("updated", "Quarantine", "net.listen.undeclared")
    assert e.tick(T0 + 31) == []  # reported once


def test_escalation_by_occurrences_and_distinct_rules_rejudges_standing_violations() -> None:
    pol = policy(
        enforcement={
            "debounce": {"samples": 1},
            "escalation": [{"action": "Quarantine", "occurrences": 2}, {"action": "Suspend", "distinctRules": 2}],
        }
    )
    e, clock = engine(pol)
    d1 = feed(e, clock, [sample(t=0, listening=[listen(8081)])])
    assert [(x.kind, x.action) for x in d1] == [("new", "Alert")]
    d2 = feed(e, clock, [sample(t=1, listening=[listen(8081), listen(8082)])])
    assert sorted((x.kind, x.violation.identity, x.action) for x in d2) == [
        ("new", "port 8082", "Quarantine"),
        ("updated", "port 8081", "Quarantine"),
    ]
    d3 = feed(e, clock, [sample(t=2, listening=[listen(8081), listen(8082)], connections=[conn("192.0.2.1:80")])])
    assert sorted((x.kind, x.violation.rule, x.action) for x in d3) == [
        ("new", "net.egress.undeclared", "Suspend"),
        ("updated", "net.listen.undeclared", "Suspend"),
        ("updated", "net.listen.undeclared", "Suspend"),
    ]
    assert e.occurrences == 3


def test_two_rules_confirmed_by_one_sample_both_see_each_other() -> None:
    pol = policy(enforcement={"debounce": {"samples": 1}, "escalation": [{"action": "Delete", "distinctRules": 2}]})
    e, clock = engine(pol)
    d = feed(e, clock, [sample(t=0, listening=[listen(8081)], connections=[conn("192.0.2.1:80")])])
    assert [(x.kind, x.action) for x in d] == [("new", "Delete"), ("new", "Delete")]


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="01", min_size=1, max_size=40), st.integers(min_value=1, max_value=5))
def test_decisions_alternate_new_and_cleared_per_key(pattern: str, n: int) -> None:
    e, clock = engine(policy(enforcement={"debounce": {"samples": n}}))
    decisions = feed(e, clock, listener_samples(pattern))
    ks = [d.kind for d in decisions]
    assert all(a != b for a, b in itertools.pairwise(ks))
    assert not ks or ks[0] == "new"
    # A new decision needs n consecutive violating samples before it.
    for d in decisions:
        i = round(d.time - T0)
        if d.kind == "new":
            assert pattern[i - n + 1 : i + 1] == "1" * n
        else:
            assert pattern[i - n + 1 : i + 1] == "0" * n


# --- the sensor -------------------------------------------------------------------------------


def test_sensor_silent_then_cleared_by_the_next_sample() -> None:
    e, clock = engine(sensorSilenceSeconds=10)
    feed(e, clock, [sample(t=0)])
    assert e.tick(T0 + 9.9) == []
    [silent] = e.tick(T0 + 10)
    assert (silent.kind, silent.violation.rule, silent.violation.first_seen) == ("new", "sensor.silent", T0)
    assert e.tick(T0 + 11) == []  # still standing, not raised again
    clock.set(T0 + 12)
    decisions = e.observe(POD, sample(t=12))
    assert [(d.kind, d.violation.rule) for d in decisions] == [("new", "sensor.gap"), ("cleared", "sensor.silent")]
    # The 11 s without a sample are also a gap past the 10 s tolerance: sensor.gap stands.


def test_silence_is_judged_by_arrival_time_not_sample_time() -> None:
    e, clock = engine(sensorSilenceSeconds=10)
    clock.set(T0 + 100)
    e.observe(POD, sample(t=0))  # a sensor whose clock is 100 s behind
    assert e.tick(T0 + 105) == []


def test_expected_pod_that_never_reports_is_silent_and_forget_clears() -> None:
    e, _ = engine(policy(enforcement={"debounce": {"samples": 1}}), sensorSilenceSeconds=5)
    e.expect("agents/worker-9", now=T0)
    [d] = e.tick(T0 + 5)
    assert d.violation.pod == "agents/worker-9"
    [c] = e.forget("agents/worker-9", now=T0 + 6)
    assert c.kind == "cleared"
    assert e.tick(T0 + 60) == []


def test_sensor_restarted() -> None:
    e, clock = engine()
    d = feed(e, clock, [sample(t=0, seq=50), sample(t=1, seq=51), sample(t=2, seq=0)])
    assert kinds(d) == [("new", "sensor.restarted", 2)]


def test_nothing_is_learned_from_samples_pod_ips_come_from_the_context() -> None:
    """A sample binding any address (IP_TRANSPARENT) makes no address a job pod; the context does."""
    e, clock = engine(policy(enforcement={"debounce": {"samples": 1}}))
    spoof = sample(t=0, connections=[conn("192.0.2.50:443", local_ip="192.0.2.66")])
    ssh = sample(t=1, connections=[conn("192.0.2.66:22")])
    d = feed(e, clock, [spoof, ssh])
    assert ("net.tunnel", "192.0.2.66:22") in {(x.violation.rule, x.violation.identity) for x in d}
    e.update(context=EngineContext(job_pod_ips=CTX.job_pod_ips | {"192.0.2.66"}, dns_resolvers=CTX.dns_resolvers))
    clock.set(T0 + 2)
    d2 = e.observe(POD, sample(t=2, connections=[conn("192.0.2.66:22")]))
    assert not [x for x in d2 if x.kind == "new"]


def test_engine_lists_its_rules_one_module_per_family() -> None:
    e, _ = engine(Policy())
    families = {r.split(".")[0] for r in e.rules}
    assert families == {"process", "gpu", "net", "sensor"}
    assert {"process.denied", "process.reverse-shell", "gpu.mining-signature", "net.tunnel"} <= set(e.rules)
    assert {"net.socket.unconnected", "sensor.gap", "sensor.degraded", "sensor.restarted"} <= set(e.rules)
