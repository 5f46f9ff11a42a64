"""The pure parts of enforcement: the per-job key and its Secret, what a cut keeps, decisions rebuilt from a pod's
evidence annotation, and the engine's path for findings made outside a sample."""

from __future__ import annotations

import base64
import json

import pytest

from tests.unit.detection.samples import CTX, POD, policy, sample
from trainguard.api import sensorproto
from trainguard.api.v1alpha1 import Policy
from trainguard.builders import names, sensorkey
from trainguard.detection import Engine
from trainguard.detection.engine import ManualClock
from trainguard.detection.rules.sensor import SENSOR_IDENTITY, SENSOR_RESTARTED
from trainguard.detection.violation import Finding
from trainguard.k8s import enforcer, guard

MASTER = b"m" * 32
ATJ = {"metadata": {"name": "train", "namespace": "agents", "uid": "u-1"}}


def test_job_keys_differ_per_uid_and_refuse_a_short_master() -> None:
    assert sensorkey.job_key(MASTER, "u-1") != sensorkey.job_key(MASTER, "u-2")
    assert sensorkey.job_key(MASTER, "u-1") == sensorkey.job_key(MASTER, "u-1")
    with pytest.raises(ValueError, match="at least 32 bytes"):
        sensorkey.job_key(b"short", "u-1")
    with pytest.raises(ValueError, match="no uid"):
        sensorkey.job_key(MASTER, "")


def test_the_secret_is_owned_by_the_job_and_holds_the_key() -> None:
    key = sensorkey.job_key(MASTER, "u-1")
    secret = sensorkey.sensor_key_secret(ATJ, key)
    assert secret["metadata"]["name"] == names.sensor_key_secret_name("train") == "train-sensor-key"
    [owner] = secret["metadata"]["ownerReferences"]
    assert owner["uid"] == "u-1" and owner["controller"] is True
    assert base64.b64decode(secret["data"][sensorproto.SECRET_KEY_NAME]) == key


def _policy(**network: object) -> Policy:
    return policy(network=network)


def test_a_cut_keeps_declared_egress_job_pods_and_dns_and_nothing_else() -> None:
    pol = _policy(
        egress=[
            {"cidr": "203.0.113.0/24", "ports": [{"port": 443}]},
            {"cidr": "198.51.100.0/24", "except": ["198.51.100.7/32"]},
            {"podSelector": {"matchLabels": {"app": "store"}}, "ports": [{"port": 9000, "endPort": 9001}]},
        ],
        allowDNS=True,
        allowIntraJob=True,
    )
    keep = guard._keep(pol, frozenset({"10.0.0.5"}), frozenset({"10.96.0.10"}), {2: frozenset({"10.0.1.1"})})
    got = {(k.cidr, tuple(k.ports)) for k in keep}
    assert got == {
        ("203.0.113.0/24", (443,)),
        ("10.0.1.1/32", (9000, 9001)),
        ("10.0.0.5/32", ()),
        ("10.96.0.10/32", (53,)),
    }, "a rule with `except` is left out: the cut may take more than it must, never less"
    closed = guard._keep(_policy(allowDNS=False, allowIntraJob=False), frozenset({"10.0.0.5"}), frozenset(), {})
    assert closed == ()


def test_label_selectors_are_written_as_the_api_server_reads_them() -> None:
    sel = {
        "matchLabels": {"app": "store"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["a", "b"]},
            {"key": "x", "operator": "DoesNotExist"},
            {"key": "y", "operator": "Exists"},
            {"key": "z", "operator": "NotIn", "values": ["c"]},
        ],
    }
    assert guard._selector(sel) == "app=store,tier in (a,b),!x,y,z notin (c)"


def test_a_decision_survives_the_evidence_annotation() -> None:
    clock = ManualClock(1767225600.0)
    engine = Engine(policy(), CTX, clock)
    [decision] = engine.report(POD, Finding(SENSOR_IDENTITY, "signature", {"why": "bad mac"}))
    order = enforcer.Order(("agents", "train"), decision, b"k" * 32, (), ("10.0.0.9:22",))
    text = enforcer._evidence(order)
    doc = json.loads(text)
    assert doc["remotes"] == ["10.0.0.9:22"] and doc["rule"] == SENSOR_IDENTITY
    pod = {"metadata": {"namespace": "agents", "name": "worker-0", "annotations": {names.EVIDENCE_ANNOTATION: text}}}
    back = enforcer._marked(pod)
    assert back is not None
    assert back.violation.rule == decision.violation.rule
    assert back.violation.pod == POD
    assert enforcer._same_record(
        {"time": "x", "pod": "p", "rule": back.violation.rule, "action": back.action, "dryRun": False},
        {"time": "x", "pod": "p", "rule": decision.violation.rule, "action": decision.action, "dryRun": False},
    )
    assert back.violation.first_seen == pytest.approx(decision.violation.first_seen, abs=0.001)
    assert enforcer._marked({"metadata": {"namespace": "a", "name": "b"}}) is None


def test_reported_findings_take_the_engines_route_once() -> None:
    clock = ManualClock(1767225600.0)
    engine = Engine(policy(), CTX, clock)
    engine.observe(POD, sample(0))
    finding = Finding(SENSOR_RESTARTED, "restart-1", {"restartCount": 1})
    first = engine.report(POD, finding)
    assert [(d.kind, d.violation.rule) for d in first] == [("new", SENSOR_RESTARTED)]
    assert engine.report(POD, finding) == [], "the same restart, seen again, is not a new violation"
    assert [d.kind for d in engine.report(POD, Finding(SENSOR_RESTARTED, "restart-2", {}))] == ["new"]
    restored = Engine.restore(engine.snapshot(), policy(), CTX, clock)
    assert restored.report(POD, finding) == [], "nor after a restart of the operator"
    with pytest.raises(ValueError, match="unknown rule"):
        engine.report(POD, Finding("no.such.rule", "", {}))
