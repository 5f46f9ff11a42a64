"""`trainguard demo` (what `make demo` runs), non-interactively, and its outcome as the API records it.

The demo starts its own control plane with two KWOK nodes, the operator, the AgentTrainingJob `rome` and two demo
pods with the real sensor; worker 1 starts a miner, then worker 0 opens a reverse SSH-shaped tunnel. It writes what
it saw into DEMO_SUMMARY (the job's status, the pods' labels, annotations and conditions, the Events on them), and
this test asserts the incident's outcome from it:

- worker 1 is quarantined for a GPU/miner rule, worker 0 for the tunnel, each recorded in the job's status;
- before its tunnel, worker 0 (then the benign worker) had no violation, no action and no quarantine label;
- the established tunnel is cut (the sensor's samples stop showing it after the quarantine);
- the job's status counts them: Violating=True, quarantinedPods names both, the violations carry Quarantine.

It needs the enforcement loop (issue 13: collector, engine worker, quarantine); docs/sessions/2026-12-01-demo.md
lists what it relies on.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.demo.run import demo as run_demo
from tests.demo.run import needs_root

GPU_RULES = {"process.denied", "gpu.process.unexpected", "gpu.mining-signature"}
TUNNEL_RULES = {"net.tunnel", "net.egress.undeclared", "process.denied"}

pytestmark = needs_root


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    return run_demo(Path(tmp_path_factory.mktemp("demo")))


def _violations(summary: dict[str, Any], pod: str) -> list[dict[str, Any]]:
    return [v for v in summary["status"].get("violations", []) if v.get("pod") == pod]


def test_the_demo_exits_0_and_shows_the_timeline_and_the_evidence(
    demo: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    result, summary = demo
    out = result.stdout
    assert result.returncode == 0, f"exit {result.returncode}:\n{out[-6000:]}\n{result.stderr[-3000:]}"
    assert summary["ok"]
    for text in ("first sample from its sensor", "process xmrig", "kubectl get atj", "latencies"):
        assert text in out, f"{text!r} missing from the output:\n{out[-6000:]}"
    assert "203.0.113.66:22 ESTABLISHED" in out or "process ssh" in out
    assert f"kubectl describe pod {summary['miner']}" in out and f"kubectl describe pod {summary['tunnel']}" in out
    assert "trainguard.io/quarantined" in out  # the NetworkPolicies' selectors and the pods' labels
    assert "\033[" not in out  # no colour without a terminal


def test_the_sensors_saw_the_incident_through_the_pod_ips(
    demo: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    _, summary = demo
    miner, tunnel = summary["miner"], summary["tunnel"]
    assert "miner" in summary["seen"][miner] and "gpu" in summary["seen"][miner]
    assert "tunnel" in summary["seen"][tunnel]
    # The engine run by the demo on the same samples (what the operator's engine should decide too).
    local = {p: {d["rule"] for d in ds} for p, ds in summary["localDecisions"].items()}
    assert local[miner] & GPU_RULES and "net.tunnel" in local[tunnel]


def test_the_miner_is_quarantined_for_a_gpu_rule(demo: tuple[subprocess.CompletedProcess[str], dict[str, Any]]) -> None:
    _, summary = demo
    miner = summary["miner"]
    pod = summary["pods"][miner]
    assert pod["labels"].get("trainguard.io/quarantined") == "true", pod
    records = _violations(summary, miner)
    assert {v["rule"] for v in records} & GPU_RULES, records
    assert all(v["action"] == "Quarantine" and not v.get("dryRun") for v in records), records
    assert "net.tunnel" not in {v["rule"] for v in records}


def test_the_tunnel_is_quarantined_and_the_benign_worker_was_left_alone_until_then(
    demo: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    _, summary = demo
    tunnel = summary["tunnel"]
    before = summary["beforeTunnel"]
    assert before["violations"] == [] and before["actions"] == [] and not before["quarantined"], before
    assert "trainguard.io/quarantined" not in before["labels"]
    pod = summary["pods"][tunnel]
    assert pod["labels"].get("trainguard.io/quarantined") == "true", pod
    records = _violations(summary, tunnel)
    assert {v["rule"] for v in records} & TUNNEL_RULES, records
    # The quarantine cut what was already open: the sensor's next samples no longer show the tunnel, or the
    # attacker's end of it saw it closed.
    assert "cut" in summary["seen"][tunnel], summary["seen"]
    assert any("203.0.113.66" in v.get("evidence", "") or "ssh" in v.get("evidence", "") for v in records), records


def test_the_job_status_counts_both(demo: tuple[subprocess.CompletedProcess[str], dict[str, Any]]) -> None:
    _, summary = demo
    status = summary["status"]
    conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
    assert conditions.get("Violating") == "True", status
    assert {summary["miner"], summary["tunnel"]} <= set(status.get("quarantinedPods", [])), status
    assert status.get("violationCount", 0) >= 2, status
