"""The gap closed on a real node: a stream opened before the quarantine label survives the label (kube-router
accepts ESTABLISHED before any policy), and the sensor, as the builders shape it (root with only the cut's
capabilities, the job's key Secret mounted), cuts it on a signed command driven from the test with sensorproto."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from tests.integration.realnode.node import PONG, SENSOR, RealNode, toolbox_pod
from tests.integration.realnode.test_networkpolicy import (
    DENY_ALL,
    QUARANTINED,
    TUNNEL_CLIENT,
    _allow_unquarantined,
    _programmed,
)
from tests.polling import wait_for
from trainguard.api import sensorproto, v1alpha1
from trainguard.api.sensorproto import CutCommand, CutReport
from trainguard.builders import names
from trainguard.builders.settings import BuildSettings
from trainguard.builders.workload import sensor_container, sensor_key_volume

ROOT = Path(__file__).resolve().parents[3]
KEY = uuid.uuid4().hex.encode() + uuid.uuid4().hex.encode()

POST = """
import json, sys, urllib.request, urllib.error
url, body, headers = sys.argv[1], sys.argv[2].encode(), json.loads(sys.argv[3])
request = urllib.request.Request(url, data=body or None, headers=headers, method="POST" if body else "GET")
try:
    response = urllib.request.urlopen(request, timeout=10)
except urllib.error.HTTPError as e:
    response = e
print(json.dumps({"status": response.status, "headers": dict(response.headers), "body": response.read().decode()}))
"""


def _sensor_pod(ns: str) -> dict[str, Any]:
    atj: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "minimal.yaml").read_text())
    job = v1alpha1.AgentTrainingJob.model_validate(atj)
    sensor = sensor_container(job, BuildSettings())
    sensor.update(image=SENSOR, imagePullPolicy="Never", command=["/usr/bin/python3", "-m", "trainguard"])
    sensor["args"] = [*sensor["args"], "--gpu-source=none"]
    pod = toolbox_pod("tunnel", "")
    pod["spec"]["containers"][0].update(image=SENSOR, command=["python3", "-c", TUNNEL_CLIENT, "ECHO"])
    pod["spec"].update(
        shareProcessNamespace=True,
        initContainers=[sensor],
        volumes=[sensor_key_volume(atj["metadata"]["name"])],
    )
    return pod


def test_the_sensor_cuts_an_established_stream_that_survived_the_quarantine_label(
    real_node: RealNode, node_namespace: str
) -> None:
    ns = node_namespace
    real_node.apply(ns, DENY_ALL, _allow_unquarantined())
    real_node.apply(ns, toolbox_pod("echo", f"{PONG} & nc -ll -p 9000 -e /bin/cat"))
    real_node.wait_ready(ns, "echo")
    echo = real_node.pod_ip(ns, "echo")
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": names.sensor_key_secret_name("minimal")},
        "stringData": {sensorproto.SECRET_KEY_NAME: KEY.decode()},
    }
    pod = _sensor_pod(ns)
    pod["spec"]["containers"][0]["command"][-1] = echo
    real_node.apply(ns, secret, pod)
    real_node.wait_ready(ns, "tunnel", timeout=120)
    tunnel = real_node.pod_ip(ns, "tunnel")
    wait_for(lambda: _programmed(real_node, ns, "tunnel"), 20, "kube-router never programmed the tunnel pod")
    real_node.kubectl("-n", ns, "exec", "tunnel", "-c", "main", "--", "python3", "-c", "open('/tmp/go', 'w')")
    wait_for(lambda: _echoes_of(real_node, ns) >= 5, 20, "the stream is not flowing")

    real_node.kubectl("-n", ns, "label", "pod", "tunnel", f"{QUARANTINED}=true")
    before = _echoes_of(real_node, ns)
    wait_for(lambda: _echoes_of(real_node, ns) >= before + 10, 15, "the established stream stopped at the label")

    pod_name = f"{ns}/tunnel"
    auth = {"Authorization": f"Bearer {sensorproto.pod_credential(KEY, pod_name)}"}
    base = f"http://{tunnel}:9400"
    assert _call(real_node, f"{base}{sensorproto.SAMPLE_PATH}", b"", {})["status"] == 401
    command = CutCommand(pod=pod_name, nonce=uuid.uuid4().hex, issued_at=time.time())
    body = command.model_dump_json(by_alias=True).encode()
    headers = {**auth, sensorproto.SIGNATURE_HEADER: sensorproto.sign_command(KEY, body)}
    headers["Content-Type"] = "application/json"
    started = time.monotonic()
    answer = _call(real_node, f"{base}{sensorproto.CUT_PATH}", body, headers)
    took = time.monotonic() - started
    assert answer["status"] == 200, answer
    out = answer["body"].encode()
    assert sensorproto.report_ok(KEY, out, answer["headers"].get(sensorproto.SIGNATURE_HEADER))
    report = CutReport.model_validate_json(out)
    assert report.confirmed, report
    assert any(s.remote.address == echo and s.remote.port == 9000 and s.pid for s in report.destroyed), report

    # The stream is gone for good: its holder got ECONNABORTED (a destroyed socket), and no packet flows again.
    def broken() -> bool:
        lines = real_node.kubectl("-n", ns, "logs", "tunnel", "-c", "main").stdout.splitlines()
        return bool(lines) and lines[-1].startswith("ERROR")

    wait_for(broken, 10, "the stream still flows after the cut")
    print(f"real-node cut: {took * 1000:.0f} ms (nsenter and a python start included); {report}")


def _echoes_of(node: RealNode, ns: str) -> int:
    lines = node.kubectl("-n", ns, "logs", "tunnel", "-c", "main").stdout.splitlines()
    assert not any(line.startswith("ERROR") for line in lines), lines[-3:]
    return len(lines)


def _call(node: RealNode, url: str, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    result = node.inside("python3", "-c", POST, url, body.decode(), json.dumps(headers))
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer
