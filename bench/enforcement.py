"""Detection to isolation at scale (issue 13): N monitored pods on KWOK nodes, each with a real HTTP sensor stream on
its own 127.x pod IP (one replaying process plays every sensor, speaking the real protocol: tests/sensorplay.py) at
1 Hz; 10 of them open a reverse tunnel at known times.

Printed: detection-to-isolation latency p50/p95/p99 (from the first violating sample's timestamp to the later of
the API server accepting the quarantine label and the sensor receiving the authenticated cut), the operator's CPU
(cores, over the steady phase with every stream open) and peak RSS, missed actions (a malicious pod not isolated
within 30 s) and duplicated ones (a pod cut twice, a healthy pod quarantined, a violation recorded twice).

Goals at 1,000 pods: p99 <= 1 s, <= 0.5 core, <= 500 MiB, zero missed, zero duplicated.

    .venv/bin/python bench/enforcement.py [--pods 1000] [--pods 100 ...] [--malicious 10]

It starts its own control plane, kwok and 4 KWOK nodes per run (scripts/controlplane build must have run).
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402
from kubernetes import client, config, watch  # noqa: E402
from tests.integration import controlplane, kwok  # noqa: E402
from tests.sensorplay import Player  # noqa: E402

from trainguard.builders import sensorkey  # noqa: E402

ATJ = ("trainguard.io", "v1alpha1", "agenttrainingjobs")
NAMESPACE = "bench"
REPLICAS = 10
KWOK_NODES = 4
TICK = os.sysconf("SC_CLK_TCK")
GOALS = {"p99_s": 1.0, "cores": 0.5, "rss_mib": 500.0}


def cpu_and_hwm(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return (int(fields[11]) + int(fields[12])) / TICK, int(status["VmHWM"].split()[0]) / 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def atj(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "trainguard.io/v1alpha1",
        "kind": "AgentTrainingJob",
        "metadata": {"name": name},
        "spec": {
            "replicas": REPLICAS,
            "template": {"spec": {"containers": [{"name": "trainer", "image": "trainer", "command": ["python"]}]}},
            "policy": {"enforcement": {"action": "Quarantine"}},
            # The bench machine (2 cores shared, the control plane, kwok, the player and the operator on it)
            # stalls the player's streams for seconds while 1,000 pods start: at the defaults that is sensor.gap
            # and sensor.silent, and a quarantine, for healthy pods. What is measured here is the tunnel.
            "monitoring": {
                "sensorSilenceSeconds": 300,
                "sensorGapToleranceSeconds": 300,
                "sensorGapWindowSeconds": 600,
            },
        },
    }


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run(pods: int, malicious: int, tmp: Path) -> bool:
    print(f"== {pods} monitored pods, {malicious} turning malicious")
    plane = controlplane.ControlPlane.start(controlplane.binary(), tmp / "data")
    kw = kwok.Kwok.start(plane.kubeconfig, tmp / "kwok.log")
    api = config.new_client_from_config(config_file=str(plane.kubeconfig))
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    ext = client.ApiextensionsV1Api(api)
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        ext.create_custom_resource_definition(yaml.safe_load(path.read_text()))
    time.sleep(2)
    kwok.add_nodes(core, [f"kwok-{i}" for i in range(KWOK_NODES)], kw)
    core.create_namespace({"metadata": {"name": NAMESPACE}})
    port = free_port()
    master = secrets.token_hex(32).encode()
    (tmp / "master.key").write_bytes(master)
    player = Player(port=port)
    log = (tmp / "operator.log").open("wb")
    operator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trainguard",
            "run",
            f"--kubeconfig={plane.kubeconfig}",
            f"--namespace={NAMESPACE}",
            "--metrics-port=0",
            "--log-format=json",
            "--operator-namespace=trainguard-system",
            f"--sensor-port={port}",
            f"--sensor-master-key-file={tmp / 'master.key'}",
            "--dns-ip=10.96.0.10",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    labelled: dict[str, float] = {}
    stop = threading.Event()

    def watch_labels() -> None:
        w = watch.Watch()
        while not stop.is_set():
            try:
                for event in w.stream(core.list_namespaced_pod, NAMESPACE, timeout_seconds=30):
                    p = event["object"]
                    if "trainguard.io/quarantined" in (p.metadata.labels or {}):
                        labelled.setdefault(f"{NAMESPACE}/{p.metadata.name}", time.time())
                    if stop.is_set():
                        return
            except Exception:
                time.sleep(0.5)

    threading.Thread(target=watch_labels, daemon=True).start()
    ok = False
    try:
        jobs = max(1, pods // REPLICAS)
        for i in range(jobs):
            custom.create_namespaced_custom_object(*ATJ[:2], NAMESPACE, ATJ[2], atj(f"job-{i:04d}"))
        started = time.monotonic()
        keys: dict[str, bytes] = {}
        while time.monotonic() - started < 300:
            items = core.list_namespaced_pod(NAMESPACE).items
            running = [p for p in items if p.status.phase == "Running" and p.status.pod_ip]
            for p in running:
                pod = f"{NAMESPACE}/{p.metadata.name}"
                if pod in player.pods:
                    continue
                job = p.metadata.labels["trainguard.io/job"]
                if job not in keys:
                    uid = custom.get_namespaced_custom_object(*ATJ[:2], NAMESPACE, ATJ[2], job)["metadata"]["uid"]
                    keys[job] = sensorkey.job_key(master, uid)
                player.add(pod, p.status.pod_ip, keys[job])
            if len(player.pods) >= jobs * REPLICAS and player.streams >= jobs * REPLICAS:
                break
            time.sleep(1)
        total = len(player.pods)
        print(f"  {total} pods Running, {player.streams} sensor streams open after {time.monotonic() - started:.0f} s")
        time.sleep(5)  # steady state
        cpu0, _ = cpu_and_hwm(operator.pid)
        wall0 = time.monotonic()
        names = sorted(player.pods)
        chosen = [names[i * len(names) // malicious] for i in range(malicious)]
        for pod in chosen:
            player.set_mode(pod, "tunnel")
            time.sleep(1.0)
        deadline = time.time() + 30
        while time.time() < deadline and not all(pod in labelled and player.cuts.get(pod) for pod in chosen):
            time.sleep(0.2)
        time.sleep(3)  # anything doubled shows now
        cpu1, hwm = cpu_and_hwm(operator.pid)
        cores = (cpu1 - cpu0) / (time.monotonic() - wall0)
        latencies = []
        missed = []
        for pod in chosen:
            p = player.pods[pod]
            cut_at = p.cut_at
            if pod not in labelled or cut_at is None or p.mode_since is None:
                missed.append(pod)
                continue
            latencies.append(max(labelled[pod], cut_at) - p.mode_since)
        doubled = [pod for pod in chosen if len(player.cuts.get(pod, [])) > 1]
        wrong = sorted(set(labelled) - set(chosen))
        why: dict[str, int] = {}
        for pod in wrong[:50]:
            p = core.read_namespaced_pod(pod.split("/")[1], NAMESPACE)
            rule = yaml.safe_load((p.metadata.annotations or {}).get("trainguard.io/evidence", "{}")).get("rule", "?")
            why[rule] = why.get(rule, 0) + 1
        print(
            f"  detection to isolation: p50 {percentile(latencies, 0.5):.3f} s,"
            f" p95 {percentile(latencies, 0.95):.3f} s,"
            f" p99 {percentile(latencies, 0.99):.3f} s (n={len(latencies)}; mean"
            f" {statistics.fmean(latencies) if latencies else float('nan'):.3f} s)"
        )
        print(f"  operator: {cores:.2f} cores during the malicious phase, peak RSS {hwm:.0f} MiB")
        print(
            f"  missed {len(missed)} {missed or ''}, duplicated {len(doubled)} {doubled or ''},"
            f" healthy pods quarantined {len(wrong)} {wrong or ''}"
        )
        load = os.getloadavg()
        print(f"  load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
        ok = (
            not missed
            and not doubled
            and not wrong
            and percentile(latencies, 0.99) <= GOALS["p99_s"]
            and cores <= GOALS["cores"]
            and hwm <= GOALS["rss_mib"]
        )
        print(f"  goals (p99 <= 1 s, <= 0.5 core, <= 500 MiB, none missed or doubled): {'met' if ok else 'MISSED'}")
    finally:
        stop.set()
        operator.terminate()
        try:
            operator.wait(20)
        except subprocess.TimeoutExpired:
            operator.kill()
        player.stop()
        kw.stop()
        plane.stop()
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, action="append", help="monitored pods (repeat; default 100, 1000)")
    parser.add_argument("--malicious", type=int, default=10)
    args = parser.parse_args()
    results = []
    for n in args.pods or [100, 1000]:
        with tempfile.TemporaryDirectory(prefix="bench-enforcement-") as tmp:
            results.append(run(n, min(args.malicious, n), Path(tmp)))
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
