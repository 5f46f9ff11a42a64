"""NetworkPolicy on a real node (kubelet, containerd, kube-router): packets, not objects.

Each "blocked" is asserted over several probes in a row and each "open" is retried (one-off probe failures were
seen: docs/controlplane.md). The policies are written here by hand; the operator's builders will write them later.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.realnode.node import PONG, SENSOR, RealNode, toolbox_pod
from tests.polling import wait_for

BLOCKED_PROBES = 4
QUARANTINED = "trainguard.io/quarantined"


def policy(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name}, "spec": spec}


DENY_ALL = policy("deny-all", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})


def assert_open(node: RealNode, ns: str, src: str, ip: str, *, port: int = 8080, timeout: float = 20) -> None:
    wait_for(lambda: node.connects(ns, src, ip, port), timeout, f"{src} -> {ip}:{port} should be open")


def assert_blocked(node: RealNode, ns: str, src: str, ip: str, *, port: int = 8080, settle: float = 20) -> None:
    """Blocked for BLOCKED_PROBES probes in a row, within ``settle`` seconds of the change (the dataplane needs a
    moment to program the rule)."""
    streak = 0

    def blocked_streak() -> bool:
        nonlocal streak
        streak = streak + 1 if not node.connects(ns, src, ip, port) else 0
        return streak >= BLOCKED_PROBES

    wait_for(blocked_streak, settle, f"{src} -> {ip}:{port} should be blocked {BLOCKED_PROBES} probes in a row")


@pytest.fixture
def trio(real_node: RealNode, node_namespace: str) -> dict[str, str]:
    """Three pods a, b, c, each serving "pong" on 8080; returns name -> pod IP, all reachable before any policy."""
    real_node.apply(node_namespace, *(toolbox_pod(n, PONG, {"role": "worker"}) for n in "abc"))
    real_node.wait_ready(node_namespace, "a", "b", "c")
    ips = {n: real_node.pod_ip(node_namespace, n) for n in "abc"}
    assert_open(real_node, node_namespace, "a", ips["b"])
    return ips


def test_pods_get_addresses_from_the_nodes_pod_cidr(real_node: RealNode, trio: dict[str, str]) -> None:
    assert real_node.pod_cidr == "10.231.0.0/24"
    assert all(ip.startswith("10.231.0.") for ip in trio.values()), trio
    assert len(set(trio.values())) == 3


def test_default_deny_holds(real_node: RealNode, node_namespace: str, trio: dict[str, str]) -> None:
    real_node.apply(node_namespace, DENY_ALL)
    assert_blocked(real_node, node_namespace, "a", trio["b"])
    assert_blocked(real_node, node_namespace, "c", trio["a"])
    real_node.kubectl("-n", node_namespace, "delete", "networkpolicy", "deny-all")
    assert_open(real_node, node_namespace, "a", trio["b"])


def test_declared_egress_is_open_and_nothing_else(
    real_node: RealNode, node_namespace: str, trio: dict[str, str]
) -> None:
    """Default deny, then a declared egress of a to b:8080 (and b's ingress from a): a reaches b, c reaches
    nobody, a reaches nobody else, b cannot call a back."""
    egress = policy(
        "a-egress",
        {
            "podSelector": {"matchLabels": {"app": "a"}},
            "policyTypes": ["Egress"],
            "egress": [
                {"to": [{"ipBlock": {"cidr": f"{trio['b']}/32"}}], "ports": [{"protocol": "TCP", "port": 8080}]}
            ],
        },
    )
    ingress = policy(
        "b-ingress",
        {
            "podSelector": {"matchLabels": {"app": "b"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "a"}}}], "ports": [{"port": 8080}]}],
        },
    )
    real_node.apply(node_namespace, DENY_ALL, egress, ingress)
    assert_blocked(real_node, node_namespace, "c", trio["b"])
    assert_open(real_node, node_namespace, "a", trio["b"])
    assert_blocked(real_node, node_namespace, "a", trio["c"])
    assert_blocked(real_node, node_namespace, "b", trio["a"])


def _allow_unquarantined() -> dict[str, Any]:
    """Every allow policy excludes quarantined pods: NetworkPolicies are additive, so an isolating policy alone
    could never take back what this one allows."""
    unquarantined = {"matchExpressions": [{"key": QUARANTINED, "operator": "DoesNotExist"}]}
    return policy(
        "allow-workers",
        {
            "podSelector": unquarantined,
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"podSelector": unquarantined}]}],
            "egress": [{"to": [{"podSelector": unquarantined}]}],
        },
    )


def test_quarantine_label_cuts_new_connections_both_ways_and_spares_neighbours(
    real_node: RealNode, node_namespace: str, trio: dict[str, str]
) -> None:
    real_node.apply(node_namespace, DENY_ALL, _allow_unquarantined())
    assert_open(real_node, node_namespace, "a", trio["b"])
    assert_open(real_node, node_namespace, "b", trio["a"])
    real_node.kubectl("-n", node_namespace, "label", "pod", "a", f"{QUARANTINED}=true")
    assert_blocked(real_node, node_namespace, "a", trio["b"])  # out of the quarantined pod
    assert_blocked(real_node, node_namespace, "b", trio["a"])  # into it
    assert_blocked(real_node, node_namespace, "c", trio["a"])
    assert_open(real_node, node_namespace, "b", trio["c"])  # the neighbours keep theirs
    assert_open(real_node, node_namespace, "c", trio["b"])
    real_node.kubectl("-n", node_namespace, "label", "pod", "a", f"{QUARANTINED}-")
    assert_open(real_node, node_namespace, "a", trio["b"])


TUNNEL_CLIENT = """
import os, socket, sys, time
while not os.path.exists("/tmp/go"):
    time.sleep(0.1)
s = socket.create_connection((sys.argv[1], 9000), timeout=3)
i = 0
try:
    while True:
        s.sendall(b"tick %d\\n" % i)
        print(i, s.recv(100), flush=True)
        i += 1
        time.sleep(0.2)
except OSError as e:
    print("ERROR", repr(e), flush=True)
time.sleep(100000)
"""
"""A reverse tunnel's shape: one connection, a line out and its echo back every 0.2 s, each echo printed (the
pod's log counts them). Python (the sensor image's), not busybox nc: busybox nc streams under kube-router
policies died within a second here even with no label (not root-caused; see docs/controlplane.md)."""


def _echoes(node: RealNode, ns: str, pod: str) -> int:
    lines = node.kubectl("-n", ns, "logs", pod).stdout.splitlines()
    assert not any(line.startswith("ERROR") for line in lines), lines[-3:]
    return len(lines)


def _programmed(node: RealNode, ns: str, pod: str) -> bool:
    """kube-router has written the pod's firewall chain (its rules name the pod)."""
    return f"POD name:{pod} namespace: {ns}" in node.inside("iptables-save", "-t", "filter").stdout


def test_established_connection_survives_the_quarantine_label(real_node: RealNode, node_namespace: str) -> None:
    """The gap the enforcement issue closes: kube-router accepts RELATED,ESTABLISHED before any policy, so a stream
    opened before the label keeps flowing after it while new connections are cut; deleting its conntrack entry
    (what destroying the socket amounts to for the dataplane) stops it."""
    ns = node_namespace
    real_node.apply(ns, DENY_ALL, _allow_unquarantined())
    real_node.apply(ns, toolbox_pod("echo", f"{PONG} & nc -ll -p 9000 -e /bin/cat"))
    real_node.wait_ready(ns, "echo")
    echo = real_node.pod_ip(ns, "echo")
    tunnel_pod = toolbox_pod("tunnel", "")
    tunnel_pod["spec"]["containers"][0].update(image=SENSOR, command=["python3", "-c", TUNNEL_CLIENT, echo])
    real_node.apply(ns, tunnel_pod)
    real_node.wait_ready(ns, "tunnel")
    tunnel = real_node.pod_ip(ns, "tunnel")
    # Open the stream once the policies cover the pod, as a tunnel opened mid-run would be.
    wait_for(lambda: _programmed(real_node, ns, "tunnel"), 20, "kube-router never programmed the tunnel pod")
    real_node.kubectl("-n", ns, "exec", "tunnel", "--", "python3", "-c", "open('/tmp/go', 'w')")
    wait_for(lambda: _echoes(real_node, ns, "tunnel") >= 5, 20, "the stream is not flowing")

    real_node.kubectl("-n", ns, "label", "pod", "tunnel", f"{QUARANTINED}=true")
    assert_blocked(real_node, ns, "echo", tunnel)  # new connections into the quarantined pod: cut
    before = _echoes(real_node, ns, "tunnel")
    wait_for(
        lambda: _echoes(real_node, ns, "tunnel") >= before + 5,
        10,
        "the established stream stopped at the label (then kube-router would cut established flows: update this test)",
    )

    deleted = real_node.inside("conntrack", "-D", "-s", tunnel)
    assert deleted.returncode == 0, deleted.stderr

    # Its next packet is NEW to the dataplane, from a quarantined pod: rejected. The client times out.
    def broken() -> bool:
        lines = real_node.kubectl("-n", ns, "logs", "tunnel").stdout.splitlines()
        return bool(lines) and lines[-1].startswith("ERROR")

    wait_for(broken, 20, "the stream still flows after its conntrack entry was deleted")
