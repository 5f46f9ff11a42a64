"""`DEMO_REAL_NODE=1 make demo` on the real node tier (the session's node of `real_node`, attached through
DEMO_REAL_NODE_PID/_KUBECONFIG/_KUBECTL: one real node per machine): the rome story in real containers with the real
sensor sidecar the operator adds, worker 1's miner and worker 0's reverse tunnel to a listener pod. Both are
quarantined by the operator; the tunnel is really cut (the sensor's cut confirmed, the listener saw it close) and a
new connection from the quarantined pod fails (kube-router applies the NetworkPolicy); worker 0 was left alone
until its tunnel."""

from __future__ import annotations

from pathlib import Path

from tests.demo.run import demo
from tests.integration.realnode.node import RealNode

GPU_OR_PROCESS = {"process.denied", "gpu.process.unexpected", "gpu.mining-signature"}
TUNNEL_RULES = {"net.tunnel", "net.egress.undeclared", "process.denied"}


def test_the_demo_on_the_real_node_cuts_the_tunnel_and_isolates_the_pod(real_node: RealNode, tmp_path: Path) -> None:
    result, summary = demo(
        tmp_path,
        timeout=480,
        DEMO_REAL_NODE="1",
        DEMO_TIMEOUT="60",
        DEMO_REAL_NODE_PID=str(real_node.pid),
        DEMO_REAL_NODE_KUBECONFIG=str(real_node.kubeconfig),
        DEMO_REAL_NODE_KUBECTL=str(real_node.kubectl_path),
    )
    out = result.stdout
    assert result.returncode == 0, f"exit {result.returncode}:\n{out[-6000:]}\n{result.stderr[-3000:]}"
    assert summary["ok"] and summary["realNode"]
    miner, tunnel = summary["miner"], summary["tunnel"]
    violations = summary["status"]["violations"]
    assert {v["rule"] for v in violations if v["pod"] == miner} & GPU_OR_PROCESS, violations
    assert {v["rule"] for v in violations if v["pod"] == tunnel} & TUNNEL_RULES, violations
    assert all(v["action"] == "Quarantine" and not v.get("dryRun") for v in violations), violations
    before = summary["beforeTunnel"]
    assert before["violations"] == [] and before["actions"] == [] and not before["quarantined"], before
    pod = summary["pods"][tunnel]
    assert pod["labels"].get("trainguard.io/quarantined") == "true", pod
    assert pod["annotations"].get("trainguard.io/cut", "").startswith("confirmed"), pod["annotations"]
    assert "cut" in summary["seen"][tunnel], summary["seen"]
    assert summary["newConnectionBlocked"] is True
    assert "isolated" in out and f"kubectl describe pod {tunnel}" in out
    # The namespace of an attached node is tidied away (the node itself is the session's, left running).
    real_node.kubectl("get", "nodes")
