"""The example traces: zero violations on every benign workload, the right rule in time on every attack."""

from __future__ import annotations

import importlib.util
import json
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from trainguard.api.v1alpha1 import AgentTrainingJob
from trainguard.detection.context import EngineContext
from trainguard.detection.replay import replay
from trainguard.detection.trace import LineError, read_samples
from trainguard.detection.violation import Decision

TRACES = Path(__file__).resolve().parents[3] / "examples" / "traces"
SCENARIOS: list[dict[str, Any]] = json.loads((TRACES / "scenarios.json").read_text())
#: Sample timestamps carry a few milliseconds of jitter, as a sensor's would.
JITTER = 0.05


@cache
def decisions_for(trace: str, policy: str) -> list[Decision]:
    job = AgentTrainingJob.model_validate(yaml.safe_load((TRACES / policy).read_text()))
    with (TRACES / trace).open("rb") as fh:
        items = [item for _, item in read_samples(fh, trace)]
    assert not [i for i in items if isinstance(i, LineError)]
    samples = sorted((i for i in items if not isinstance(i, LineError)), key=lambda s: s.ts)
    scenario = next(s for s in SCENARIOS if s["trace"] == trace)
    ctx = EngineContext(
        dns_resolvers=frozenset(scenario["context"]["dnsResolvers"]),
        job_pod_ips=frozenset(scenario["context"]["podIPs"]),
    )
    return replay(job.spec.policy, samples, ctx, job.spec.monitoring)


def ids(kind: str) -> list[str]:
    return [s["trace"] for s in SCENARIOS if s["kind"] == kind]


def test_there_are_enough_scenarios() -> None:
    assert len(ids("benign")) >= 4
    assert len(ids("attack")) >= 4


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s["kind"] == "benign"], ids=ids("benign"))
def test_benign_trace_has_no_violation(scenario: dict[str, Any]) -> None:
    decisions = decisions_for(scenario["trace"], scenario["policy"])
    assert [(d.violation.rule, d.violation.pod, d.violation.identity) for d in decisions] == []


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s["kind"] == "attack"], ids=ids("attack"))
def test_attack_trace_raises_exactly_the_expected_rules_in_time(scenario: dict[str, Any]) -> None:
    decisions = decisions_for(scenario["trace"], scenario["policy"])
    new = [d for d in decisions if d.kind == "new"]
    assert {d.violation.rule for d in new} == {e["rule"] for e in scenario["expect"]}
    for expect in scenario["expect"]:
        mine = [d for d in new if d.violation.rule == expect["rule"] and d.violation.pod == expect["pod"]]
        assert mine, f"{expect['rule']} not raised for {expect['pod']}"
        first = min(d.time for d in mine)
        deadline = expect["from"] + expect["withinSeconds"] + JITTER
        assert expect["from"] <= first <= deadline, (expect["rule"], first - expect["from"])
    # Only the attacked pod is accused.
    assert {d.violation.pod for d in new} == {e["pod"] for e in scenario["expect"]}


def test_without_the_clusters_facts_the_benign_traces_fail_closed() -> None:
    """Nothing is learned from samples: without the pod IPs, NCCL and the rendezvous are undeclared egress."""
    job = AgentTrainingJob.model_validate(yaml.safe_load((TRACES / "policy-dev.yaml").read_text()))
    with (TRACES / "pip-tensorboard.jsonl").open("rb") as fh:
        samples = [item for _, item in read_samples(fh, "t") if not isinstance(item, LineError)]
    rules = {(d.violation.rule, d.violation.identity) for d in replay(job.spec.policy, samples, EngineContext())}
    assert ("net.egress.undeclared", "10.244.1.10:29500") in rules
    assert ("net.egress.undeclared", "10.244.2.11:41010") in rules


def test_policies_are_valid_agent_training_jobs() -> None:
    for p in sorted(TRACES.glob("policy-*.yaml")):
        AgentTrainingJob.model_validate(yaml.safe_load(p.read_text()))


def test_traces_are_small_and_what_the_generator_writes() -> None:
    spec = importlib.util.spec_from_file_location("trace_generator", TRACES / "generate.py")
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = generator  # its dataclasses look their module up
    try:
        spec.loader.exec_module(generator)
    finally:
        del sys.modules[spec.name]
    for seed, sc in enumerate(generator.SCENARIOS, start=1):
        path = TRACES / f"{sc.name}.jsonl"
        assert path.stat().st_size < 512 * 1024, path.name
        assert path.read_text() == "\n".join(generator.render(sc, seed)) + "\n", f"{path.name}: run generate.py"
