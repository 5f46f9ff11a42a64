"""`trainguard demo`: the ROME incident, caught and contained, on the embedded control plane with KWOK nodes.

The steps (docs/sessions/2026-12-01-demo.md says why each is so):

1. `scripts/controlplane up --kwok-nodes 2` (builds or reuses the cached control plane; its progress is shown);
2. the CRD, a namespace, the operator (`trainguard run --admission-policy`) as a subprocess;
3. the AgentTrainingJob `rome` (examples/rome-lockdown.yaml, renamed) with two workers; KWOK runs their pods and
   gives them 127.x addresses;
4. per worker, a demo pod (`trainguard.cli.demo_pod`) in its own pid+net+mount namespaces: real processes, real
   sockets, and the REAL `trainguard sensor` bound to the pod's IP inside it; the host's pod IP and sensor port are
   forwarded into that namespace, so whoever reads the pod's sensor from the API's pod IP reaches it;
5. normal training; then a miner on worker 1's GPU (replayed GPU telemetry naming the real `xmrig` process); then a
   reverse SSH-shaped tunnel from worker 0 (a real TCP connection to a listener in another namespace);
6. a timeline built from what the API says (Events, the job's status, pod labels and conditions), with the sample
   that showed each step and the latency from it; then `kubectl get atj`, the quarantined pods' evidence and the
   NetworkPolicy that isolates them; clean-up.

Environment: DEMO_SCENARIO (`rome`, the default; or a scenario of examples/traces/scenarios.json whose signals are
GPU telemetry: each worker replays one of its pods' GPU readings under the scenario's policy), DEMO_KEEP=1 (leave
everything running until Ctrl-C, print the KUBECONFIG line), DEMO_SUMMARY=PATH (write the outcome as JSON: the test
reads it), DEMO_TIMEOUT (seconds each phase may take, default 60), DEMO_LOCAL_ENGINE=0 (do not run the detection
engine in the demo itself), TRAINGUARD_CLUSTER_CIDR (the demo pods' addresses, default 127.112.0.0/12).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from trainguard.api import sensorproto
from trainguard.api.sample import Sample
from trainguard.api.v1alpha1 import AgentTrainingJob
from trainguard.detection import Engine, EngineContext

ROOT = Path(__file__).resolve().parents[3]
NAMESPACE = "rome-demo"
JOB = "rome"
SENSOR_PORT = 9400
ATTACKER, POD_SIDE = "203.0.113.66", "203.0.113.10"  # TEST-NET-3, only inside namespaces the demo creates
MINER_TICK = 16  # the GPU trace puts the miner on worker 1's GPU from this sample on
CLONE_NEWNET = 0x40000000
#: Pod and job Event reasons of the operator's own lifecycle (everything else on a guarded pod is the loop's).
LIFECYCLE = {"Created", "Updated", "Applied", "Reconciled", "Ready", "SensorNotReady", "ChildrenApplied"}
GPU_RULES = {"process.denied", "gpu.process.unexpected", "gpu.mining-signature"}
TUNNEL_RULES = {"net.tunnel", "net.egress.undeclared", "process.denied"}

LISTENER = """
import socket, subprocess, threading
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 22)); srv.listen(8)
def serve(c, peer):
    print("open", peer, flush=True)
    try:
        with c:
            while True:
                data = c.recv(4096)
                if not data:
                    break
                c.sendall(data)
    except OSError as e:
        print("error", peer, e, flush=True)
    print("closed", peer, flush=True)
while True:
    c, peer = srv.accept()
    threading.Thread(target=serve, args=(c, peer), daemon=True).start()
"""


class Out:
    """Plain lines; colour only when stdout is a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.colour = stream.isatty() and os.environ.get("NO_COLOR") is None
        self.t0 = time.time()

    def _c(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.colour else text

    def step(self, text: str) -> None:
        print(self._c("1", f"==> {text}"), file=self.stream, flush=True)

    def line(self, what: str, text: str, code: str = "0", at: float | None = None) -> None:
        """One timeline line, stamped with `at` (a sample's own time) or now, in seconds since the demo started."""
        stamp = f"{(at or time.time()) - self.t0:7.2f}s"
        print(f"{stamp}  {self._c(code, f'{what:<9}')} {text}", file=self.stream, flush=True)

    def raw(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


# --- the cluster, through kubectl (what the user would type) -----------------------------------


@dataclass
class Cluster:
    run_dir: Path
    kubectl_bin: str
    kubeconfig: Path

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        result = subprocess.run(
            [self.kubectl_bin, f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check and result.returncode != 0:
            raise DemoError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def get(self, *args: str) -> dict[str, Any]:
        out = self.kubectl("get", "-o", "json", *args)
        return dict(json.loads(out))


class DemoError(RuntimeError):
    """A step that failed, with what to look at."""


def controlplane(*args: str, env: dict[str, str]) -> str:
    """scripts/controlplane with its progress on stderr (the user's terminal); its stdout returned."""
    result = subprocess.run(
        [str(ROOT / "scripts" / "controlplane"), *args], env=env, stdout=subprocess.PIPE, text=True, check=False
    )
    if result.returncode != 0:
        raise DemoError(f"scripts/controlplane {' '.join(args)} failed (exit {result.returncode})")
    return result.stdout


# --- the demo pods ---------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def _pid1(process: subprocess.Popen[bytes], what: str) -> int:
    deadline = time.time() + 15
    while time.time() < deadline:
        kids = _children(process.pid)
        if kids:
            return kids[0]
        if process.poll() is not None:
            raise DemoError(f"{what}: unshare exited with {process.returncode}")
        time.sleep(0.02)
    raise DemoError(f"{what}: no pid 1 after 15 s")


_libc = ctypes.CDLL(None, use_errno=True)


class Forwarder:
    """The pod's IP and sensor port on the host, forwarded into the demo pod's network namespace (where the real
    sensor serves the same address): each accepted connection is dialled from a thread that joined that namespace."""

    def __init__(self, address: str, port: int, netns_pid: int) -> None:
        self.address, self.port, self.netns = address, port, f"/proc/{netns_pid}/ns/net"
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind((address, port))
        self.server.listen(64)
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._dial, args=(client,), daemon=True).start()

    def _dial(self, client: socket.socket) -> None:
        try:
            fd = os.open(self.netns, os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            upstream = socket.create_connection((self.address, self.port), timeout=5)
            upstream.settimeout(None)
        except OSError:
            client.close()
            return
        threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
        _pump(client, upstream)

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def gpu_trace(path: Path, pod: str, miner_at: int | None) -> None:
    """Worker GPU telemetry (a template: pid -1 is the trainer, -2 the miner; the demo pod writes their real pids):
    python3 training on GPU 0; from tick `miner_at`, `xmrig` beside it at full utilization and power. The last tick
    holds."""
    lines = []
    ticks = (miner_at or 0) + 1 if miner_at is not None else 1
    for tick in range(ticks):
        procs: list[dict[str, Any]] = [{"pid": -1, "name": "python3", "usedMemoryBytes": 30 << 30}]
        util, power = 0.62, 280.0
        if miner_at is not None and tick >= miner_at:
            procs.append({"pid": -2, "name": "xmrig", "usedMemoryBytes": 2 << 30})
            util, power = 1.0, 690.0
        gpus = [
            {
                "index": 0,
                "uuid": "GPU-demo-0000-0001",
                "utilization": util,
                "memoryUsedBytes": sum(p["usedMemoryBytes"] for p in procs),
                "memoryTotalBytes": 80 << 30,
                "powerWatts": power,
                "smClockMHz": 1980,
                "processes": procs,
            }
        ]
        lines.append(json.dumps({"ts": 1767225600.0 + tick, "pod": pod, "seq": tick, "gpus": gpus}))
    path.write_text("\n".join(lines) + "\n")


@dataclass
class DemoPod:
    index: int
    name: str
    ip: str
    work: Path
    key: bytes | None
    process: subprocess.Popen[bytes] | None = None
    attacker: subprocess.Popen[bytes] | None = None
    forwarder: Forwarder | None = None
    pid1: int = 0
    seen: dict[str, float] = field(default_factory=dict)  # step -> ts of the first sample that showed it
    closed: threading.Event = field(default_factory=threading.Event)

    @property
    def ref(self) -> str:
        return f"{NAMESPACE}/{self.name}"

    def start(self, sensor_flags: list[str], with_attacker: bool) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        sensor = [
            sys.executable, "-m", "trainguard", "sensor", f"--pod={self.ref}", f"--address={self.ip}",
            f"--port={SENSOR_PORT}", "--interval=1", *sensor_flags,
        ]  # fmt: skip
        argv = ["unshare", "--net", "--pid", "--fork", "--mount-proc", "--kill-child", sys.executable, "-m"]
        argv += ["trainguard.cli.demo_pod", str(self.work), ATTACKER, json.dumps(sensor), str(self.work / "gpu.in")]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=(self.work / "unshare.log").open("wb"))
        self.pid1 = _pid1(self.process, self.name)
        if with_attacker:
            self.attacker = subprocess.Popen(
                ["unshare", "--net", "--fork", "--kill-child", sys.executable, "-c", LISTENER],
                stdout=(self.work / "attacker.log").open("wb"),
                stderr=subprocess.STDOUT,
            )
            attacker_pid = _pid1(self.attacker, "the attacker's host")
            a, b = f"tgd{self.pid1}a", f"tgd{self.pid1}b"
            for cmd in (
                ["ip", "link", "add", a, "type", "veth", "peer", "name", b],
                ["ip", "link", "set", a, "netns", str(self.pid1)],
                ["ip", "link", "set", b, "netns", str(attacker_pid)],
                ["nsenter", "-t", str(self.pid1), "-n", "ip", "addr", "add", f"{POD_SIDE}/24", "dev", a],
                ["nsenter", "-t", str(self.pid1), "-n", "ip", "link", "set", a, "up"],
                ["nsenter", "-t", str(attacker_pid), "-n", "ip", "addr", "add", f"{ATTACKER}/24", "dev", b],
                ["nsenter", "-t", str(attacker_pid), "-n", "ip", "link", "set", b, "up"],
            ):
                subprocess.run(cmd, check=True, capture_output=True)
        try:
            self.forwarder = Forwarder(self.ip, SENSOR_PORT, self.pid1)
        except OSError as error:
            raise DemoError(f"{self.ip}:{SENSOR_PORT}: {error.strerror} (another process has it)") from None

    def state(self) -> dict[str, Any]:
        with contextlib.suppress(OSError, ValueError):
            return dict(json.loads((self.work / "state.json").read_text()))
        return {}

    def trigger(self, phase: str) -> None:
        (self.work / phase).touch()

    def follow(self, samples: queue.Queue[tuple[DemoPod, Sample]]) -> None:
        """Read the sensor's stream through the pod's IP, as the operator does (signed lines where keyed), every
        sample of it, in a thread of its own; reconnect until stopped."""

        def read() -> None:
            path = sensorproto.SAMPLES_PATH if self.key else "/v1/samples"
            while not self.closed.is_set():
                request = urllib.request.Request(f"http://{self.ip}:{SENSOR_PORT}{path}")
                if self.key:
                    request.add_header("Authorization", f"Bearer {sensorproto.pod_credential(self.key, self.ref)}")
                try:
                    with urllib.request.urlopen(request, timeout=5) as response:
                        for line in response:
                            if self.closed.is_set():
                                return
                            body = sensorproto.verify_sample(self.key, line) if self.key else line.split(b"\t")[0]
                            samples.put((self, Sample.model_validate_json(body)))
                except (OSError, ValueError, sensorproto.BadSignature):
                    self.closed.wait(0.5)

        threading.Thread(target=read, daemon=True).start()

    def stop(self) -> None:
        self.closed.set()
        if self.forwarder:
            self.forwarder.close()
        for p in (self.process, self.attacker):
            if p and p.poll() is None:
                p.kill()
                p.wait(10)


# --- the timeline ------------------------------------------------------------------------------


@dataclass
class PodOutcome:
    quarantined_at: float | None = None
    violation_at: float | None = None  # when the demo first saw a violation of the pod in the job's status
    rules: set[str] = field(default_factory=set)
    actions: list[dict[str, Any]] = field(default_factory=list)  # {reason, at, message}
    conditions: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)


def _after(first: float, t: float | None) -> str:
    return f"{t - first:.2f} s" if t else "-"


class Timeline:
    """Polls the API (Events, the job's status, pods) and the sensors; prints each new fact once."""

    def __init__(self, cluster: Cluster, out: Out, pods: list[DemoPod], engine: Engine | None) -> None:
        self.cluster, self.out, self.pods, self.engine = cluster, out, pods, engine
        self.events: set[str] = set()
        self.samples: queue.Queue[tuple[DemoPod, Sample]] = queue.Queue()
        for pod in pods:
            pod.follow(self.samples)
        self.records: set[str] = set()
        self.conditions: dict[str, str] = {}
        self.outcome = {p.name: PodOutcome() for p in pods}
        self.local: dict[str, list[dict[str, Any]]] = {p.name: [] for p in pods}
        self.seq: dict[str, int] = {}
        self.status: dict[str, Any] = {}

    def latency(self, pod: DemoPod, at: float) -> str:
        ts = min(pod.seen.values()) if pod.seen else None
        return f" ({at - ts:.2f} s after the sample)" if ts else ""

    def poll(self) -> None:
        self.drain()
        self._api()
        self.drain()
        self.attacker_saw_close()

    def drain(self) -> None:
        while True:
            try:
                pod, sample = self.samples.get_nowait()
            except queue.Empty:
                return
            self._sensor(pod, sample)

    def attacker_saw_close(self) -> None:
        """The attacker's end of the tunnel (the listener's log): a close there is the cut, seen from outside."""
        for pod in self.pods:
            if pod.attacker is None or "cut" in pod.seen or "tunnel" not in pod.seen:
                continue
            with contextlib.suppress(OSError):
                if "closed" in (pod.work / "attacker.log").read_text():
                    pod.seen["cut"] = time.time()
                    self.out.line("attacker", f"{ATTACKER}:22: the tunnel from {pod.name} was closed (cut)", "32")

    def latencies(self) -> list[str]:
        """Per pod: from the first sample that showed its step to the violation in the job's status, the quarantine
        label, and the first sample without the tunnel."""
        rows = []
        for pod in self.pods:
            o = self.outcome[pod.name]
            first = min((pod.seen[k] for k in ("miner", "tunnel") if k in pod.seen), default=None)
            if first is None:
                continue

            violation, label = _after(first, o.violation_at), _after(first, o.quarantined_at)
            rows.append(
                f"    {pod.name}: violation in status {violation}, quarantine label {label}"
                + (f", tunnel cut {_after(first, pod.seen.get('cut'))}" if "tunnel" in pod.seen else "")
            )
        return rows

    def _sensor(self, pod: DemoPod, sample: Sample) -> None:
        if pod.name not in self.seq:
            self.out.line(
                "sample", f"{pod.name}: first sample from its sensor ({len(sample.processes)} processes)", at=sample.ts
            )
        self.seq[pod.name] = sample.seq
        state = pod.state()
        gpu = {p.name for g in sample.gpus for p in g.processes}
        miner = next((p for p in sample.processes if p.name == "xmrig"), None)
        if "miner" in state and "miner" not in pod.seen and miner is not None:
            pod.seen["miner"] = sample.ts
            where = "and on GPU 0 (replayed telemetry, 100% utilization)" if "xmrig" in gpu else "(not on the GPU yet)"
            self.out.line(
                "sample", f"{pod.name} seq {sample.seq}: process xmrig pid {miner.pid} {where}", "33", at=sample.ts
            )
        if "miner" in pod.seen and "gpu" not in pod.seen and "xmrig" in gpu:
            pod.seen["gpu"] = sample.ts
            if miner is None or pod.seen["miner"] != sample.ts:
                self.out.line(
                    "sample", f"{pod.name} seq {sample.seq}: xmrig on GPU 0 (replayed telemetry)", "33", at=sample.ts
                )
        tunnel = [c for c in sample.connections if c.remote.address == ATTACKER]
        ssh = next((p for p in sample.processes if "tunnel" in state and p.pid == state["tunnel"]), None)
        if ssh is not None and "tunnel" not in pod.seen and not tunnel:
            pod.seen["tunnel"] = sample.ts
            args = " ".join(ssh.argv[2:])
            self.out.line(
                "sample", f"{pod.name} seq {sample.seq}: process ssh pid {ssh.pid} ({args})", "33", at=sample.ts
            )
        if "tunnel" in state and "connection" not in pod.seen and tunnel:
            pod.seen.setdefault("tunnel", sample.ts)
            pod.seen["connection"] = sample.ts
            c = tunnel[0]
            self.out.line(
                "sample",
                f"{pod.name} seq {sample.seq}: {c.local.address}:{c.local.port} -> {c.remote.address}:{c.remote.port}"
                f" {c.state} (pid {c.pid})",
                "33",
                at=sample.ts,
            )
        if "connection" in pod.seen and "cut" not in pod.seen and not tunnel:
            pod.seen["cut"] = sample.ts
            self.out.line(
                "sample",
                f"{pod.name} seq {sample.seq}: the tunnel to {ATTACKER}:22 is gone (cut in the pod)",
                "32",
                at=sample.ts,
            )
        if self.engine is not None:
            for decision in self.engine.observe(pod.ref, sample):
                d = decision.to_dict()
                if any(x.get("rule") == d.get("rule") and x.get("kind") == d.get("kind") for x in self.local[pod.name]):
                    continue
                self.local[pod.name].append(d)
                self.out.line(
                    "detect",
                    f"{pod.name}: {d.get('rule')} -> {decision.action} (engine run by the demo)",
                    "35",
                    at=sample.ts,
                )

    def _api(self) -> None:
        events = self.cluster.get("events", "-n", NAMESPACE).get("items", [])
        for e in sorted(events, key=lambda e: str(e.get("eventTime") or e.get("lastTimestamp") or "")):
            uid = e["metadata"]["uid"] + str(e.get("count", 1))
            if uid in self.events:
                continue
            self.events.add(uid)
            involved, reason = e.get("involvedObject", {}), str(e.get("reason", ""))
            name, message = str(involved.get("name", "")), " ".join(str(e.get("message", "")).split())
            source = f"{e.get('reportingComponent', '')} {e.get('source', {}).get('component', '')}"
            if (
                involved.get("kind") not in ("Pod", "AgentTrainingJob")
                or reason in LIFECYCLE
                or "trainguard" not in source
            ):
                continue
            for pod in self.pods:
                if name == pod.name or pod.name in message:
                    o = self.outcome[pod.name]
                    o.actions.append({"reason": reason, "at": time.time(), "message": message})
                    o.rules.update(r for r in GPU_RULES | TUNNEL_RULES | {"sensor.identity"} if r in message)
                    kind = "violation" if "violat" in reason.lower() else "action"
                    if involved.get("kind") == "Pod" or kind == "violation":
                        text = message if len(message) <= 200 else message[:197] + "..."
                        self.out.line(kind, f"{pod.name}: {reason}: {text}{self.latency(pod, time.time())}", "31")
                    break
        atj = self.cluster.get("atj", JOB, "-n", NAMESPACE)
        self.status = dict(atj.get("status") or {})
        for v in self.status.get("violations", []):
            key = f"{v.get('pod')}|{v.get('rule')}|{v.get('time')}"
            who = next((p for p in self.pods if p.name == v.get("pod")), None)
            if key in self.records or who is None:
                continue
            self.records.add(key)
            pod = who
            self.outcome[pod.name].violation_at = self.outcome[pod.name].violation_at or time.time()
            self.outcome[pod.name].rules.add(str(v.get("rule")))
            dry = " [dry run]" if v.get("dryRun") else ""
            evidence = " ".join(str(v.get("evidence", "")).split())
            self.out.line(
                "violation",
                f"{pod.name}: {v.get('rule')} ({v.get('severity')}) -> {v.get('action')}{dry}, in the job's status"
                f"{self.latency(pod, time.time())}: {evidence[:140]}",
                "31",
            )
        for c in self.status.get("conditions", []):
            text = f"{c.get('status')}/{c.get('reason', '')}"
            if self.conditions.get(c["type"]) != text:
                self.conditions[c["type"]] = text
                self.out.line("status", f"atj/{JOB} {c['type']}={text}: {c.get('message', '')}", "36")
        for pod_obj in self.cluster.get("pods", "-n", NAMESPACE).get("items", []):
            name = pod_obj["metadata"]["name"]
            if name not in self.outcome:
                continue
            o = self.outcome[name]
            o.labels = dict(pod_obj["metadata"].get("labels") or {})
            o.annotations = dict(pod_obj["metadata"].get("annotations") or {})
            for value in o.annotations.values():
                o.rules.update(r for r in GPU_RULES | TUNNEL_RULES if r in value)
            o.conditions = {c["type"]: c["status"] for c in pod_obj.get("status", {}).get("conditions", [])}
            if o.quarantined_at is None and o.labels.get("trainguard.io/quarantined") == "true":
                o.quarantined_at = time.time()
                pod = next(p for p in self.pods if p.name == name)
                self.out.line(
                    "action",
                    f"{name}: labelled trainguard.io/quarantined=true{self.latency(pod, o.quarantined_at)}",
                    "31;1",
                )


# --- the whole demo ----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenario", default=os.environ.get("DEMO_SCENARIO", "rome"), help="rome (default) or a "
                        "scenario of examples/traces/scenarios.json (its GPU telemetry plays on worker 1)")  # fmt: skip
    parser.add_argument("--keep", action="store_true", default=os.environ.get("DEMO_KEEP") == "1",
                        help="leave the control plane, operator and pods running (DEMO_KEEP=1)")  # fmt: skip
    parser.add_argument("--summary", type=Path, default=os.environ.get("DEMO_SUMMARY") or None,
                        help="write the outcome as JSON here (DEMO_SUMMARY)")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=float(os.environ.get("DEMO_TIMEOUT", "60")),
                        help="seconds each phase may take (DEMO_TIMEOUT, default 60)")  # fmt: skip


@dataclass
class Scenario:
    """A recorded scenario of examples/traces/ whose signals are GPU telemetry (or none): each worker's sensor replays
    the GPU readings of one of the trace's pods while the demo pod runs the trainer only."""

    name: str
    kind: str
    expect: set[str]
    policy: dict[str, Any]  # the scenario's policy (the job takes it instead of rome-lockdown's)
    gpus: list[list[list[dict[str, Any]]]]  # per pod of the trace, in order: each tick's `gpus`


def load_scenario(name: str) -> Scenario | None:
    if name == "rome":
        return None
    traces = ROOT / "examples" / "traces"
    table = {s["trace"].removesuffix(".jsonl"): s for s in json.loads((traces / "scenarios.json").read_text())}
    if name not in table:
        raise DemoError(f"DEMO_SCENARIO={name}: not a scenario; choose rome or one of {', '.join(table)}")
    entry = table[name]
    expect = {e["rule"] if isinstance(e, dict) else str(e) for e in entry["expect"]}
    if expect and not any(r.startswith("gpu.") for r in expect):
        raise DemoError(
            f"DEMO_SCENARIO={name}: its signals ({', '.join(sorted(expect))}) are processes and sockets, which the "
            f"demo plays with real ones only in the rome scenario; replay the recording with "
            f"`trainguard replay examples/traces/{name}.jsonl --policy examples/traces/{entry['policy']}`"
        )
    per_pod: dict[str, list[list[dict[str, Any]]]] = {}
    for line in (traces / f"{name}.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            per_pod.setdefault(row.get("pod", ""), []).append(row.get("gpus", []))
    policy = yaml.safe_load((traces / entry["policy"]).read_text())["spec"]["policy"]
    return Scenario(name, entry["kind"], {r for r in expect if r.startswith("gpu.")}, policy, list(per_pod.values()))


def _terminate(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up as Ctrl-C does


def _sensor_supports(flag: str) -> bool:
    result = subprocess.run(
        [sys.executable, "-m", "trainguard", "sensor", "--help"], capture_output=True, text=True, check=False
    )
    return flag in result.stdout


def run(args: argparse.Namespace) -> int:
    out = Out(sys.stdout)
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        print(
            "trainguard demo: needs root, unshare and ip (each demo pod is its own pid+net namespace)", file=sys.stderr
        )
        return 2
    try:
        scenario = load_scenario(args.scenario)
    except DemoError as error:
        print(f"trainguard demo: {error}", file=sys.stderr)
        return 2
    cache = Path(os.environ.get("TRAINGUARD_CACHE", Path.home() / ".cache" / "trainguard"))
    cache.mkdir(parents=True, exist_ok=True)
    own_run = not os.environ.get("TRAINGUARD_RUN")
    run_dir = Path(os.environ.get("TRAINGUARD_RUN") or tempfile.mkdtemp(prefix="demo-", dir=cache))
    # Pods on 127.112.0.0/12 (one /16 per node): the tests' KWOK pods use 127.128.0.0/9, and another process on
    # this machine serving <podIP>:9400 would answer the operator in place of the demo's sensor.
    env = {**os.environ, "TRAINGUARD_RUN": str(run_dir)}
    env.setdefault("TRAINGUARD_CLUSTER_CIDR", "127.112.0.0/12")
    signal.signal(signal.SIGTERM, _terminate)
    work = run_dir / "pods"
    pods: list[DemoPod] = []
    operator: subprocess.Popen[bytes] | None = None
    cluster: Cluster | None = None
    summary: dict[str, Any] = {"scenario": args.scenario, "ok": False}
    try:
        out.step("control plane with 2 KWOK nodes (first run builds it: 10-20 min, progress below)")
        controlplane("tools", env=env)
        controlplane("up", "--kwok-nodes", "2", env=env)
        cluster = Cluster(run_dir, str(cache / "bin" / "kubectl"), run_dir / "data" / "kubeconfig")
        out.step("CRD, namespace, admission policy and the operator (trainguard run)")
        cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "crd/agenttrainingjobs.trainguard.io", "--timeout=30s")
        cluster.kubectl("create", "namespace", NAMESPACE, check=False)
        oplog = (run_dir / "operator.log").open("wb")
        operator = subprocess.Popen(
            [sys.executable, "-m", "trainguard", "run", f"--kubeconfig={cluster.kubeconfig}",
             f"--namespace={NAMESPACE}", "--admission-policy", "--metrics-port=0", "--resync=5"],
            stdout=oplog, stderr=subprocess.STDOUT,
        )  # fmt: skip
        out.raw(f"    operator pid {operator.pid}, log {run_dir / 'operator.log'}")
        body = yaml.safe_load((ROOT / "examples" / "rome-lockdown.yaml").read_text())
        body["metadata"]["name"], body["metadata"]["namespace"] = JOB, NAMESPACE
        if scenario is not None:
            body["spec"]["policy"] = scenario.policy
        # KWOK reports a pod Running before the demo has started its sensor (the key is read from the API first):
        # a wider silence bound than the example's 10 s, so that a slow machine's start is not `sensor.silent`.
        body["spec"].setdefault("monitoring", {})["sensorSilenceSeconds"] = 30
        atj = AgentTrainingJob.model_validate(body)
        deadline = time.time() + 30
        while True:  # the admission policy is installed by the operator at start
            applied = subprocess.run(
                [cluster.kubectl_bin, f"--kubeconfig={cluster.kubeconfig}", "apply", "-f", "-"],
                input=json.dumps(body), capture_output=True, text=True, check=False,
            )  # fmt: skip
            if applied.returncode == 0:
                break
            if time.time() > deadline or operator.poll() is not None:
                raise DemoError(f"creating atj/{JOB}: {applied.stderr.strip()}")
            time.sleep(0.5)
        out.step(f"atj/{JOB}: 2 workers, policy: egress only 198.51.100.0/24:443, python on the GPUs, no tunnels")
        running: list[dict[str, Any]] = []
        deadline = time.time() + args.timeout
        while len(running) < 2:
            if time.time() > deadline:
                raise DemoError(f"the job's pods are not Running with an IP after {args.timeout:.0f} s")
            items = cluster.get("pods", "-n", NAMESPACE, "-l", f"trainguard.io/job={JOB}").get("items", [])
            if not items:
                items = cluster.get("pods", "-n", NAMESPACE).get("items", [])
            running = [p for p in items if p["status"].get("phase") == "Running" and p["status"].get("podIP")]
            time.sleep(0.5)
        running.sort(key=lambda p: int(p["metadata"].get("annotations", {}).get(
            "batch.kubernetes.io/job-completion-index", "0")))  # fmt: skip
        key: bytes | None = None
        deadline = time.time() + (15 if _sensor_supports("--key-file") else 0)
        while key is None and time.time() < deadline:
            secret = subprocess.run(
                [cluster.kubectl_bin, f"--kubeconfig={cluster.kubeconfig}", "get", "secret", f"{JOB}-sensor-key",
                 "-n", NAMESPACE, "-o", "jsonpath={.data.sensor\\.key}"],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if secret.returncode == 0 and secret.stdout:
                import base64  # noqa: PLC0415

                key = base64.b64decode(secret.stdout)
            else:
                time.sleep(0.5)
        keyed = key is not None
        out.raw(
            f"    sensor key: Secret {JOB}-sensor-key read from the API, passed with --key-file" if keyed
            else f"    sensor key: no Secret {JOB}-sensor-key (or no --key-file in this sensor): samples unsigned"
        )  # fmt: skip
        for p in running:
            index = len(pods)
            pods.append(DemoPod(index, p["metadata"]["name"], p["status"]["podIP"], work / f"worker-{index}", key))
        out.step("demo pods: real processes and sockets in their own pid+net namespaces, the real sensor in each")
        for pod in pods:
            pod.work.mkdir(parents=True, exist_ok=True)
            trace = pod.work / "gpu.jsonl"  # written by the demo pod from gpu.in
            if scenario is None:
                gpu_trace(pod.work / "gpu.in", pod.ref, MINER_TICK if pod.index == 1 else None)
            else:
                ticks = scenario.gpus[pod.index % len(scenario.gpus)]
                rows = [
                    json.dumps({"ts": 1767225600.0 + i, "pod": pod.ref, "seq": i, "gpus": g})
                    for i, g in enumerate(ticks)
                ]
                (pod.work / "gpu.in").write_text("\n".join(rows) + "\n")
            end = "hold" if scenario is None else "loop"
            flags = ["--gpu-source=replay", f"--gpu-trace={trace}", f"--gpu-trace-end={end}"]
            if keyed and key:
                (pod.work / "sensor.key").write_bytes(key)
                (pod.work / "sensor.key").chmod(0o600)
                flags.append(f"--key-file={pod.work / 'sensor.key'}")
            pod.start(flags, with_attacker=pod.index == 0)
            out.raw(f"    {pod.name} ({pod.ip}): pid 1 = host pid {pod.pid1}, work {pod.work}")
        engine = None
        if os.environ.get("DEMO_LOCAL_ENGINE", "1") == "1":
            context = EngineContext(job_pod_ips=frozenset(p.ip for p in pods), sensor_port=SENSOR_PORT)
            engine = Engine(atj.spec.policy, context)
        timeline = Timeline(cluster, out, pods, engine)
        out.step("timeline (sample: what a sensor sent; violation/action/status: what the API says)")

        def until(what: str, done: Any, timeout: float = args.timeout) -> bool:
            end = time.time() + timeout
            while time.time() < end:
                timeline.poll()
                if done():
                    return True
                time.sleep(0.25)
            out.line("timeout", f"{what}: not seen within {timeout:.0f} s", "31")
            return False

        out.line("phase", "normal training on both workers", "1")
        until("first samples", lambda: len(timeline.seq) == 2)
        worker0, worker1 = pods[0], pods[1]
        before_tunnel: dict[str, Any] = {}
        if scenario is None:
            until("normal ticks", lambda: timeline.seq.get(worker1.name, 0) >= MINER_TICK - 4)
            out.line("phase", f"{worker1.name}: xmrig starts on GPU 0", "1")
            worker1.trigger("miner")
            miner_caught = until(
                "the miner quarantined", lambda: timeline.outcome[worker1.name].quarantined_at is not None
            )
            before_tunnel = {
                "actions": list(timeline.outcome[worker0.name].actions),
                "quarantined": timeline.outcome[worker0.name].quarantined_at is not None,
                "violations": [v for v in timeline.status.get("violations", []) if v.get("pod") == worker0.name],
                "labels": dict(timeline.outcome[worker0.name].labels),
            }
            out.line("phase", f"{worker0.name}: ssh -R to {ATTACKER}:22 (a real TCP connection)", "1")
            worker0.trigger("tunnel")
            tunnel_caught = until(
                "the tunnel quarantined", lambda: timeline.outcome[worker0.name].quarantined_at is not None
            )
            if tunnel_caught:
                until(
                    "the tunnel cut (gone from the samples, or closed at the attacker's end)",
                    lambda: "cut" in worker0.seen,
                    15.0,
                )
            until("xmrig on worker 1's GPU in the samples", lambda: "gpu" in worker1.seen, 15.0)
            ok = miner_caught and tunnel_caught
        else:
            out.line("phase", f"scenario {scenario.name} ({scenario.kind}): each sensor replays its GPU telemetry", "1")
            recorded: set[str] = set()
            wait = max(args.timeout, max(len(t) for t in scenario.gpus) + 20.0)  # the whole recording, once

            def expected() -> bool:
                recorded.update(r for o in timeline.outcome.values() for r in o.rules)
                recorded.update(str(d.get("rule")) for ds in timeline.local.values() for d in ds)
                return bool(scenario.expect & recorded)

            if scenario.kind == "benign":
                until_end = time.time() + wait
                while time.time() < until_end:
                    timeline.poll()
                    time.sleep(0.25)
                expected()
                ok = not recorded and not any(o.quarantined_at for o in timeline.outcome.values())
            else:
                ok = until(f"one of {sorted(scenario.expect)} recorded", expected, wait)
            out.line(
                "outcome", f"expected {sorted(scenario.expect) or 'no violation'}; recorded {sorted(recorded)}", "1"
            )
        timeline.poll()
        out.step("latencies: from the sample that showed each step to the demo seeing the API change (upper bounds)")
        for row in timeline.latencies():
            out.raw(row)
        out.step(f"kubectl get atj -n {NAMESPACE}")
        out.raw(cluster.kubectl("get", "atj", "-n", NAMESPACE, "-o", "wide"))
        for pod in pods:
            if timeline.outcome[pod.name].quarantined_at is not None:
                out.step(f"kubectl describe pod {pod.name} (the evidence)")
                described = cluster.kubectl("describe", "pod", pod.name, "-n", NAMESPACE, check=False)
                out.raw(described or f"(pod {pod.name} is gone: the operator deleted it, see the Events above)")
                evidence = timeline.outcome[pod.name].annotations.get("trainguard.io/evidence")
                if evidence:
                    out.step(f"{pod.name}: annotation trainguard.io/evidence")
                    with contextlib.suppress(ValueError):
                        evidence = json.dumps(json.loads(evidence), indent=2)
                    out.raw(evidence)
        out.step(f"kubectl get networkpolicy -n {NAMESPACE} (the quarantine isolates the labelled pods)")
        out.raw(cluster.kubectl("get", "networkpolicy", "-n", NAMESPACE, "-o", "wide"))
        policies = cluster.get("networkpolicy", "-n", NAMESPACE).get("items", [])
        for np in policies:  # what still selects a quarantined pod: the deny (every allow excludes the label)
            if "trainguard.io/quarantined" not in json.dumps(np.get("spec", {})):
                out.step(
                    f"kubectl describe networkpolicy {np['metadata']['name']} (all that applies to a quarantined pod)"
                )
                out.raw(cluster.kubectl("describe", "networkpolicy", np["metadata"]["name"], "-n", NAMESPACE))
        summary.update(
            ok=bool(ok),
            miner=worker1.name,
            tunnel=worker0.name,
            beforeTunnel=before_tunnel,
            seen={p.name: p.seen for p in pods},
            states={p.name: p.state() for p in pods},
            status=timeline.status,
            localDecisions=timeline.local,
            pods={n: {"quarantinedAt": o.quarantined_at, "rules": sorted(o.rules), "actions": o.actions,
                      "labels": o.labels, "annotations": o.annotations, "conditions": o.conditions}
                  for n, o in timeline.outcome.items()},
        )  # fmt: skip
        if not summary["ok"] and scenario is None:
            out.raw(
                "trainguard demo: the operator did not quarantine both pods in time. The collector, engine worker "
                "and quarantine (issue 13) must be installed; the lines marked 'detect' above are the engine run by "
                "the demo itself on the same samples."
            )
        return 0 if summary["ok"] else 1
    except DemoError as error:
        print(f"trainguard demo: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("trainguard demo: interrupted", file=sys.stderr)
        return 130
    finally:
        if args.summary:
            args.summary.write_text(json.dumps(summary, indent=2, default=str))
        if args.keep:
            out.step("DEMO_KEEP=1: left running")
            out.raw(f"export KUBECONFIG={run_dir / 'data' / 'kubeconfig'}")
            out.raw(f"export PATH={cache / 'bin'}:$PATH")
            out.raw(f"stop it with: TRAINGUARD_RUN={run_dir} scripts/controlplane down")
            if pods or operator:
                out.raw("(the demo pods and the operator stop with this command: press Ctrl-C)")
                with contextlib.suppress(KeyboardInterrupt):
                    signal.pause()
        out.step("cleaning up")
        if cluster is not None and operator is not None and operator.poll() is None:
            cluster.kubectl("delete", "atj", JOB, "-n", NAMESPACE, "--wait=true", "--timeout=30s", check=False)
        for pod in pods:
            pod.stop()
        if operator is not None and operator.poll() is None:
            operator.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                operator.wait(30)
            if operator.poll() is None:
                operator.kill()
        with contextlib.suppress(DemoError):
            controlplane("down", env=env)
        if own_run and summary["ok"]:
            shutil.rmtree(run_dir, ignore_errors=True)
        elif not summary["ok"]:
            out.raw(f"logs kept in {run_dir}")
