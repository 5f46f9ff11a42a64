"""The project's own sensor (`trainguard sensor`, image trainguard.local/sensor:1) as a native sidecar in a real pod
reports the pod's real processes, listening sockets and connections."""

from __future__ import annotations

from typing import Any

from tests.integration.realnode.node import PONG, SENSOR, TOOLBOX, RealNode, toolbox_pod
from tests.polling import wait_for
from trainguard.api.sample import Endpoint, Sample, parse_sample


def test_sensor_in_a_real_pod_reports_processes_and_sockets(real_node: RealNode, node_namespace: str) -> None:
    real_node.apply(node_namespace, toolbox_pod("peer", PONG + " & nc -ll -p 9000 -e /bin/cat"))
    real_node.wait_ready(node_namespace, "peer")
    peer = real_node.pod_ip(node_namespace, "peer")
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "sensed"},
        "spec": {
            "shareProcessNamespace": True,
            "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": False,
            "initContainers": [
                {
                    "name": "sensor",
                    "image": SENSOR,
                    "imagePullPolicy": "Never",
                    "restartPolicy": "Always",
                    "args": ["--gpu-source", "none", "--port", "9400", "--interval", "0.5"],
                    "env": [
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    ],
                }
            ],
            "containers": [
                {
                    "name": "trainer",
                    "image": TOOLBOX,
                    "imagePullPolicy": "Never",
                    "command": ["sh", "-c", f"nc -ll -p 7000 -e /bin/pong & sleep 100000 | nc {peer} 9000"],
                }
            ],
        },
    }
    real_node.apply(node_namespace, pod)
    real_node.wait_ready(node_namespace, "sensed")
    ip = real_node.pod_ip(node_namespace, "sensed")
    url = f"http://{ip}:9400/v1/sample"
    fetch = f"import urllib.request, sys; sys.stdout.write(urllib.request.urlopen({url!r}, timeout=3).read().decode())"

    def sample() -> Sample | None:
        # From the node (its traffic to pods is always allowed), as the operator's scraper will.
        result = real_node.inside("python3", "-c", fetch)
        if result.returncode != 0:
            return None
        body = parse_sample(result.stdout)
        connected = any(c.remote == Endpoint(address=peer, port=9000) for c in body.connections)
        return body if connected else None

    body = wait_for(sample, 30, f"a sample from the sensor at {ip}:9400 showing the connection to {peer}:9000")
    assert body.pod == f"{node_namespace}/sensed"
    assert body.sensor.reader == "netlink", body.sensor
    commands = {" ".join(p.argv): p for p in body.processes}
    assert "nc -ll -p 7000 -e /bin/pong" in commands, sorted(commands)
    assert "sleep 100000" in commands and f"nc {peer} 9000" in commands
    assert any("trainguard sensor" in c for c in commands), "the sensor does not see itself"
    listener = commands["nc -ll -p 7000 -e /bin/pong"]
    ports = {(s.local.port, s.pid) for s in body.listening}
    assert (7000, listener.pid) in ports, body.listening
    tunnel = commands[f"nc {peer} 9000"]
    (conn,) = [c for c in body.connections if c.remote == Endpoint(address=peer, port=9000)]
    assert conn.pid == tunnel.pid, conn
    assert conn.state == "ESTABLISHED", conn
    # What the kernel says the process is, not what it calls itself: busybox's applets all run /bin/busybox.
    assert tunnel.exe_status == "ok" and tunnel.exe.endswith("busybox"), tunnel
    blind = [e for e in body.sensor.errors if not e.kind.startswith("gpu")]
    assert not blind, body.sensor.errors
