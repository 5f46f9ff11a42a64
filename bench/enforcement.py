"""Detection to isolation at scale (issue 13): N monitored pods on KWOK nodes, each with a real HTTP sensor stream on
its own 127.x pod IP at 1 Hz; 10 of them open a reverse tunnel at known times.

The sensors are replaying players (tests/sensorplay.py, the real protocol: per-pod credentials, signed sample
lines on /v2/samples, signed cut commands and reports, the job's real key) in processes of their own
(bench/sensorfleet.py; `--players`, default one per CPU), each playing a share of the pods. The operator is
`trainguard run` in a process of its own. The bench follows the pods through one watch (raw JSON, no client
models), never by listing: a pod is handed to a player when it runs with an IP, and a quarantine label is seen
when the API server sends it.

Printed: detection-to-isolation latency p50/p95/p99 (from the first violating sample's timestamp to the later of
the bench seeing the quarantine label on the watch and the sensor receiving the authenticated cut), the operator's
CPU (cores) in the steady phase (every stream open, all clean) and in the malicious phase, its peak RSS, the
samples per second the players sent and the operator kept (sent minus what its detection thread reported
dropped), the streams opened past one per pod (reconnects), missed actions (a malicious pod not isolated within
30 s) and duplicated ones (a pod cut twice, a healthy pod quarantined). Each run prints the load average and a
yardstick (a million dict inserts, CPU and wall seconds: the wall figure grows when the machine is shared).

Goals at 1,000 pods: p99 <= 1 s, <= 0.5 core, <= 500 MiB, zero missed, zero duplicated.

    .venv/bin/python bench/enforcement.py [--pods 1000] [--pods 100 ...] [--malicious 10] [--players 2]

It starts its own control plane, kwok and KWOK nodes (one per 1,000 pods, at least 4) per run
(scripts/controlplane build must have run), and tears all of it down after each run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import secrets
import signal
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
from bench.sensorfleet import Fleet  # noqa: E402
from kubernetes import client, config  # noqa: E402
from kubernetes.watch.watch import iter_resp_lines  # noqa: E402
from tests.integration import controlplane, kwok  # noqa: E402

from trainguard.builders import names, sensorkey  # noqa: E402

ATJ = ("trainguard.io", "v1alpha1", "agenttrainingjobs")
NAMESPACE = "bench"
REPLICAS = 10
PODS_PER_NODE = 1000  # controlplane/kwok/node.yaml's capacity
TICK = os.sysconf("SC_CLK_TCK")
GOALS = {"p99_s": 1.0, "cores": 0.5, "rss_mib": 500.0}
DROPPED = re.compile(rb"detection fell behind: (\d+) samples dropped")


def cpu_and_hwm(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return (int(fields[11]) + int(fields[12])) / TICK, int(status["VmHWM"].split()[0]) / 1024


def cpu_of(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def components(plane: controlplane.ControlPlane, kw: kwok.Kwok, fleet: Fleet) -> dict[str, list[int]]:
    """The processes on the bench machine this run started, by what they are (etcd runs in `controlplane run`)."""
    found: dict[str, list[int]] = {"etcd (controlplane run)": [plane.process.pid]}
    for task in Path(f"/proc/{plane.process.pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            found.setdefault(argv[1].decode() if len(argv) > 1 else "?", []).append(int(child))
    found["kwok"] = [kw.process.pid]
    found["players"] = [m.process.pid for m in fleet.members]
    found["bench"] = [os.getpid()]
    return found


def cpu_by_component(pids: dict[str, list[int]]) -> dict[str, float]:
    return {name: sum(cpu_of(pid) for pid in group) for name, group in pids.items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def yardstick() -> tuple[float, float]:
    """A million dict inserts: (CPU s, wall s). The same yardstick as bench/detection.py, plus its wall time."""
    cpu, wall = time.process_time(), time.perf_counter()
    d: dict[int, int] = {}
    for i in range(1_000_000):
        d[i] = i
    return time.process_time() - cpu, time.perf_counter() - wall


def machine() -> str:
    load = os.getloadavg()
    cpu, wall = yardstick()
    return f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}, yardstick {cpu:.3f} s CPU / {wall:.3f} s wall"


def atj(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "trainguard.io/v1alpha1",
        "kind": "AgentTrainingJob",
        "metadata": {"name": name},
        "spec": {
            "replicas": REPLICAS,
            "template": {"spec": {"containers": [{"name": "trainer", "image": "trainer", "command": ["python"]}]}},
            "policy": {"enforcement": {"action": "Quarantine"}},
            # The bench machine (2 cores shared, the control plane, kwok, the players and the operator on it)
            # stalls streams for seconds while thousands of pods start: at the defaults that is sensor.gap and
            # sensor.silent, and a quarantine, for healthy pods. What is measured here is the tunnel.
            # At 5,000 pods on this machine streams open minutes after their pods run (the first run: 453 healthy
            # pods quarantined as silent at a 300 s bound, their quarantines queued before the tunnels'): an hour.
            "monitoring": {
                "sensorSilenceSeconds": 3600,
                "sensorGapToleranceSeconds": 3600,
                "sensorGapWindowSeconds": 7200,
            },
        },
    }


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class PodWatch:
    """The namespace's pods through one watch (list once, then watch from its resourceVersion; list again only
    after a 410), parsed as plain JSON: the client's models would cost this 2-core machine seconds of CPU per
    thousand pods, taken from the components being measured."""

    def __init__(self, core: client.CoreV1Api, namespace: str) -> None:
        self.core, self.namespace = core, namespace
        self.labelled: dict[str, float] = {}
        self._running: set[str] = set()
        self._new: list[tuple[str, str, str]] = []  # (pod, ip, job)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._response: Any = None
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name="pod-watch", daemon=True)
        self._thread.start()

    def take_new(self) -> list[tuple[str, str, str]]:
        """Pods seen running with an IP since the last call."""
        with self._lock:
            new, self._new = self._new, []
        return new

    def stop(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):
                response.close()
        self._thread.join(10)

    def _seen(self, pod: dict[str, Any], now: float) -> None:
        meta, status = pod["metadata"], pod.get("status") or {}
        name = f"{self.namespace}/{meta['name']}"
        labels = meta.get("labels") or {}
        if names.QUARANTINED_LABEL in labels:
            self.labelled.setdefault(name, now)
        job = labels.get("trainguard.io/job")
        if job and status.get("phase") == "Running" and status.get("podIP") and name not in self._running:
            self._running.add(name)
            with self._lock:
                self._new.append((name, status["podIP"], job))

    def _run(self) -> None:
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    listed = self.core.list_namespaced_pod(self.namespace, _preload_content=False)
                    body = json.loads(listed.data)
                    for pod in body["items"]:
                        self._seen(pod, time.time())
                    version = body["metadata"]["resourceVersion"]
                self._response = self.core.list_namespaced_pod(
                    self.namespace,
                    watch=True,
                    resource_version=version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=120,
                    _preload_content=False,
                    _request_timeout=(10, 150),
                )
                for line in iter_resp_lines(self._response):
                    if not line:
                        continue
                    event = json.loads(line)
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        version = None  # 410 Gone (or worse): list again
                        break
                    version = obj["metadata"]["resourceVersion"]
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._seen(obj, time.time())
            except Exception:
                if self._stop.is_set():
                    return
                self.errors += 1
                time.sleep(0.5)


def dropped_since(log_path: Path, offset: int) -> int:
    """Samples the operator's detection thread reported dropped (its log) after byte `offset`."""
    with log_path.open("rb") as f:
        f.seek(offset)
        return sum(int(m.group(1)) for m in DROPPED.finditer(f.read()))


def run(pods: int, malicious: int, players: int, tmp: Path) -> bool:
    jobs = max(1, pods // REPLICAS)
    want = jobs * REPLICAS
    nodes = max(4, math.ceil(want / PODS_PER_NODE) + 1)
    print(
        f"== {want} monitored pods ({jobs} jobs of {REPLICAS}) on {nodes} KWOK nodes, {malicious} turning"
        f" malicious, {players} player processes"
    )
    print(f"  before: {machine()}")
    plane = controlplane.ControlPlane.start(controlplane.binary(), tmp / "data")
    kw: kwok.Kwok | None = None
    fleet: Fleet | None = None
    watcher: PodWatch | None = None
    operator: subprocess.Popen[bytes] | None = None
    ok = False
    try:
        kw = kwok.Kwok.start(plane.kubeconfig, tmp / "kwok.log")
        api = config.new_client_from_config(config_file=str(plane.kubeconfig))
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        ext = client.ApiextensionsV1Api(api)
        for path in sorted((ROOT / "crds").glob("*.yaml")):
            ext.create_custom_resource_definition(yaml.safe_load(path.read_text()))
        time.sleep(2)
        kwok.add_nodes(core, [f"kwok-{i}" for i in range(nodes)], kw)
        core.create_namespace({"metadata": {"name": NAMESPACE}})
        port = free_port()
        master = secrets.token_hex(32).encode()
        (tmp / "master.key").write_bytes(master)
        fleet = Fleet(players, port, tmp)
        log_path = tmp / "operator.log"
        with log_path.open("wb") as log:
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
        watcher = PodWatch(core, NAMESPACE)
        keys: dict[str, bytes] = {}
        for i in range(jobs):
            created = custom.create_namespaced_custom_object(*ATJ[:2], NAMESPACE, ATJ[2], atj(f"job-{i:04d}"))
            keys[created["metadata"]["name"]] = sensorkey.job_key(master, created["metadata"]["uid"])
        started = time.monotonic()
        last_print = started
        state = fleet.state()
        best, best_at = 0, started
        while time.monotonic() - started < max(300, want * 0.12):
            fleet.add([(pod, ip, keys[job]) for pod, ip, job in watcher.take_new() if job in keys])
            state = fleet.state()
            if len(fleet.pods) >= want and state["streams"] >= want:
                break
            if state["streams"] > best:
                best, best_at = state["streams"], time.monotonic()
            elif len(fleet.pods) >= want and time.monotonic() - best_at > 120:
                print(f"  streams stuck at {best} for 120 s with every pod running: the operator is saturated")
                break
            if operator.poll() is not None:
                raise RuntimeError(f"the operator exited ({operator.returncode}); see {log_path}")
            if time.monotonic() - last_print >= 30:
                last_print = time.monotonic()
                print(
                    f"    {last_print - started:4.0f} s: {len(fleet.pods)} pods running, {state['streams']} streams"
                    f" open ({state['opened']} opened), load {os.getloadavg()[0]:.1f}"
                )
            time.sleep(1)
        ready_s = time.monotonic() - started
        print(
            f"  {len(fleet.pods)} pods Running, {state['streams']} sensor streams open after {ready_s:.0f} s"
            f" ({state['opened']} opened in all)"
        )
        if state["streams"] < want:
            print(f"  only {state['streams']}/{want} streams open: measuring what there is")

        # Steady phase: every stream open, every pod clean.
        time.sleep(5)
        steady = 20.0
        state = fleet.state()
        cpu0, _ = cpu_and_hwm(operator.pid)
        players0 = fleet.cpu_used()
        pids = components(plane, kw, fleet)
        by0 = cpu_by_component(pids)
        wall0 = time.monotonic()
        offset0 = log_path.stat().st_size
        sent0, opened0 = state["sent"], state["opened"]
        time.sleep(steady)
        state = fleet.state()
        cpu1, _ = cpu_and_hwm(operator.pid)
        wall1 = time.monotonic()
        span = wall1 - wall0
        steady_cores = (cpu1 - cpu0) / span
        players_cores = (fleet.cpu_used() - players0) / span
        sent_rate = (state["sent"] - sent0) / span
        kept_rate = sent_rate - dropped_since(log_path, offset0) / span
        reopened = state["opened"] - opened0
        print(
            f"  steady ({span:.0f} s, {state['streams']} streams): operator {steady_cores:.2f} cores;"
            f" players {players_cores:.2f} cores; {sent_rate:,.0f} samples/s sent, {kept_rate:,.0f}/s kept by the"
            f" operator; {reopened} streams reopened"
        )
        by1 = cpu_by_component(pids)
        print(
            "  steady, cores by component: "
            + ", ".join(f"{name} {(by1[name] - by0[name]) / span:.2f}" for name in by0)
            + f", operator {steady_cores:.2f}"
        )
        print(f"  steady: {machine()}")

        # Malicious phase: one pod a second opens a tunnel.
        cpu0 = cpu1
        wall0 = wall1
        offset0 = log_path.stat().st_size
        sent0 = state["sent"]
        # Only a pod whose stream is open is monitored: the malicious ones are chosen among those.
        order = fleet.streaming()
        chosen = [order[i * len(order) // malicious] for i in range(malicious)]
        for pod in chosen:
            fleet.set_mode(pod, "tunnel")
            time.sleep(1.0)
        deadline = time.time() + 30
        while time.time() < deadline:
            records = fleet.state()["pods"]
            if all(pod in watcher.labelled and (records.get(pod) or {}).get("cutAt") for pod in chosen):
                break
            time.sleep(0.2)
        time.sleep(3)  # anything doubled shows now
        state = fleet.state()
        cpu1, hwm = cpu_and_hwm(operator.pid)
        span = time.monotonic() - wall0
        cores = (cpu1 - cpu0) / span
        kept_rate = (state["sent"] - sent0 - dropped_since(log_path, offset0)) / span
        records = state["pods"]
        latencies: list[float] = []
        labels: list[float] = []
        cuts: list[float] = []
        missed = []
        for pod in chosen:
            record = records.get(pod) or {}
            since, cut_at = record.get("modeSince"), record.get("cutAt")
            if pod not in watcher.labelled or cut_at is None or since is None:
                missed.append(pod)
                continue
            labels.append(watcher.labelled[pod] - since)
            cuts.append(cut_at - since)
            latencies.append(max(watcher.labelled[pod], cut_at) - since)
        doubled = [pod for pod in chosen if (records.get(pod) or {}).get("cuts", 0) > 1]
        wrong = sorted(set(watcher.labelled) - set(chosen))
        why: dict[str, int] = {}
        for pod in wrong[:50]:
            p = core.read_namespaced_pod(pod.split("/")[1], NAMESPACE)
            evidence = (p.metadata.annotations or {}).get(names.EVIDENCE_ANNOTATION, "{}")
            rule = yaml.safe_load(evidence).get("rule", "?")
            why[rule] = why.get(rule, 0) + 1
        p99 = percentile(latencies, 0.99)
        print(
            f"  detection to isolation: p50 {percentile(latencies, 0.5):.3f} s,"
            f" p95 {percentile(latencies, 0.95):.3f} s,"
            f" p99 {p99:.3f} s (n={len(latencies)}; mean"
            f" {statistics.fmean(latencies) if latencies else float('nan'):.3f} s; label seen at p99"
            f" {percentile(labels, 0.99):.3f} s, cut received at p99 {percentile(cuts, 0.99):.3f} s)"
        )
        print(
            f"  operator: {cores:.2f} cores during the malicious phase ({kept_rate:,.0f} samples/s kept),"
            f" peak RSS {hwm:.0f} MiB"
        )
        print(
            f"  missed {len(missed)} {missed or ''}, duplicated {len(doubled)} {doubled or ''},"
            f" healthy pods quarantined {len(wrong)} {wrong[:5] or ''}{' ...' if len(wrong) > 5 else ''} {why or ''}"
        )
        print(f"  after: {machine()}; pod watch errors {watcher.errors}")
        ok = (
            state["streams"] >= want
            and not missed
            and not doubled
            and not wrong
            and p99 <= GOALS["p99_s"]
            and cores <= GOALS["cores"]
            and hwm <= GOALS["rss_mib"]
        )
        print(f"  goals (p99 <= 1 s, <= 0.5 core, <= 500 MiB, none missed or doubled): {'met' if ok else 'MISSED'}")
    finally:
        if watcher is not None:
            watcher.stop()
        if operator is not None:
            operator.terminate()
            try:
                operator.wait(20)
            except subprocess.TimeoutExpired:
                operator.kill()
                operator.wait()
        if fleet is not None:
            fleet.stop()
        if kw is not None:
            kw.stop()
        plane.stop()
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, action="append", help="monitored pods (repeat; default 100, 1000)")
    parser.add_argument("--malicious", type=int, default=10)
    parser.add_argument("--players", type=int, default=os.cpu_count() or 2, help="player processes (one per CPU)")
    args = parser.parse_args()
    # A SIGTERM (timeout, kill) unwinds like Ctrl-C, so that every run's finally tears its processes down.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = []
    for n in args.pods or [100, 1000]:
        with tempfile.TemporaryDirectory(prefix="bench-enforcement-") as tmp:
            results.append(run(n, min(args.malicious, n), max(1, args.players), Path(tmp)))
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
