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

Environment (each also a flag, see --help):
- DEMO_SCENARIO: `rome` (the default) or a scenario of examples/traces/scenarios.json, played for real: worker *i*
  plays the recording's *i*-th pod under the scenario's policy; its sensor replays that pod's GPU telemetry; the
  processes that appear after the first sample run as real processes with the recorded names and arguments and
  their sockets (listeners, TCP connections, connected UDP, a TIME_WAIT beacon, a socket as stdin); a gap in the
  samples stops the real sensor (SIGSTOP) or kills and restarts it (`trace_acts`). Not played: see NOT_PLAYED.
- DEMO_KEEP=1: leave the control plane (or the real node), the operator, the demo pods and their sensors running in
  the background, print the KUBECONFIG line and return; `trainguard demo --stop` (`make demo-stop`) ends them.
- DEMO_REAL_NODE=1: rome on the real node tier (scripts/realnode: kubelet, containerd, kube-router), the workload
  in real containers, the operator's real sensor sidecar, NetworkPolicy enforced; exit 2 with the reason where the
  machine does not allow it (not root, packages missing). DEMO_REAL_NODE_PID/_KUBECONFIG/_KUBECTL attach to a node
  already up (the real-node tests' session node) instead of starting one.
- DEMO_SUMMARY=PATH (the outcome as JSON: the tests read it), DEMO_TIMEOUT (seconds each phase may take, default
  60), DEMO_LOCAL_ENGINE=0 (do not run the detection engine in the demo itself), TRAINGUARD_CLUSTER_CIDR (the demo
  pods' addresses, default 127.112.0.0/12).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import queue
import random
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
from trainguard.api.sample import Sample, parse_sample
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
import socket, subprocess, sys, threading
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
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
def accept(srv):
    while True:
        c, peer = srv.accept()
        threading.Thread(target=serve, args=(c, peer), daemon=True).start()
for port in sys.argv[1:]:
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", int(port))); srv.listen(8)
    threading.Thread(target=accept, args=(srv,)).start()
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
    prefix: tuple[str, ...] = ()  # the real node: nsenter into its namespaces (its API is only reachable there)

    def call(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.prefix, self.kubectl_bin, f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        result = self.call(*args, stdin=stdin)
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


# --- the real node tier (DEMO_REAL_NODE=1) -------------------------------------------------------


REALNODE = ROOT / "scripts" / "realnode"
SENSOR_IMAGE = "trainguard.local/sensor:1"  # built by scripts/realnode install: Python, the sensor, trainguard
#: The attacker's listener as a pod of the real node (the same echo listener; the pod's `lo` is already up).
LISTENER_POD = LISTENER.replace('subprocess.run(["ip", "link", "set", "lo", "up"], check=True)\n', "")


@dataclass
class RealNodeTier:
    """One `scripts/realnode run DIR`: a control plane, containerd, a kubelet and kube-router (NetworkPolicy) in the
    network and mount namespaces held by `pid` (scripts/realnode takes a host-wide lock: one per machine)."""

    process: subprocess.Popen[str] | None  # None: a node someone else started (attach), left running
    pid: int
    kubeconfig: Path
    kubectl: str

    @classmethod
    def attach(cls) -> RealNodeTier | None:
        """A node already up (the real-node tests' session node): DEMO_REAL_NODE_PID, _KUBECONFIG, _KUBECTL."""
        pid, kubeconfig, kubectl = (os.environ.get(f"DEMO_REAL_NODE_{k}") for k in ("PID", "KUBECONFIG", "KUBECTL"))
        if not pid:
            return None
        if not (kubeconfig and kubectl and Path(f"/proc/{pid}/ns/net").exists()):
            raise DemoError("DEMO_REAL_NODE_PID needs DEMO_REAL_NODE_KUBECONFIG, DEMO_REAL_NODE_KUBECTL and a live pid")
        return cls(None, int(pid), Path(kubeconfig), kubectl)

    @classmethod
    def install(cls) -> str | None:
        """Install what the tier needs (instant once cached); why it cannot run here, or None."""
        result = subprocess.run([str(REALNODE), "install"], stdout=subprocess.PIPE, text=True, check=False)
        if result.returncode == 3 and result.stdout.startswith("skip: "):
            return result.stdout.removeprefix("skip: ").strip()
        if result.returncode != 0:
            raise DemoError(f"scripts/realnode install failed (exit {result.returncode}; its messages are above)")
        return None

    @classmethod
    def start(cls, directory: Path, timeout: float = 300.0) -> RealNodeTier:
        directory.parent.mkdir(parents=True, exist_ok=True)
        log = directory.parent / "realnode.log"
        process = subprocess.Popen(
            # SIGTERM when the demo dies, so that a killed demo still tears the node down.
            ["setpriv", "--pdeathsig", "TERM", "--", str(REALNODE), "run", str(directory)],
            stdout=subprocess.PIPE,
            stderr=log.open("w"),
            text=True,
        )
        assert process.stdout is not None
        seen: dict[str, str] = {}
        deadline = time.time() + timeout  # it may wait for another checkout's node (the host-wide lock)
        for raw in process.stdout:
            line = raw.rstrip("\n")
            if line == "ready":
                break
            key, _, value = line.partition(": ")
            seen[key] = value
            if time.time() > deadline:
                break
        if "pid" not in seen or process.poll() is not None:
            process.terminate()
            raise DemoError(f"the real node did not come up (log {log}):\n{log.read_text()[-2000:]}")
        return cls(process, int(seen["pid"]), Path(seen["kubeconfig"]), seen["kubectl"])

    @property
    def enter(self) -> tuple[str, ...]:
        return ("nsenter", f"--target={self.pid}", "--net", "--mount")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(90)
        except subprocess.TimeoutExpired:
            self.process.kill()


def real_node_job(body: dict[str, Any], listener: str) -> None:
    """The job on the real node: the workload is `demo_pod --container` in the sensor image (for its Python; no GPU:
    no GPU limit either), and the listener's address is declared egress on port 22, so that kube-router lets the
    tunnel open (a default deny would stop it before it existed: nothing to catch or cut); what gives it away is the
    `ssh -R` (process.denied, net.tunnel)."""
    spec = body["spec"]
    spec["template"]["spec"]["containers"] = [
        {
            "name": "trainer",
            "image": SENSOR_IMAGE,
            "imagePullPolicy": "Never",
            # The player's source in the environment (it is pure standard library): the image's own copy of
            # trainguard is whichever checkout built the cached sensor image last, not necessarily this one; and not
            # on the command line, which the sensor reports (its text names xmrig and ssh -R: process.denied).
            "command": ["python3", "-c", "import os; exec(os.environ.pop('TG_DEMO_POD'))", "--container", listener],
            "env": [{"name": "TG_DEMO_POD", "value": (Path(__file__).parent / "demo_pod.py").read_text()}],
        }
    ]
    spec["template"]["spec"]["terminationGracePeriodSeconds"] = 1
    spec["policy"]["network"]["egress"].append({"cidr": f"{listener}/32", "ports": [{"port": 22, "protocol": "TCP"}]})


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


def _join_netns(path: str) -> None:
    """The calling thread (only it) joins the network namespace at `path`."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
    finally:
        os.close(fd)


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
            _join_netns(self.netns)
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
    remote: str = ATTACKER  # the attacker's address (the listener pod's on the real node)
    netns: str | None = None  # the real node: its network namespace (/proc/PID/ns/net), where the pod IP routes
    cluster: Cluster | None = None  # the real node: phases are started in the container with kubectl exec
    seen: dict[str, float] = field(default_factory=dict)  # step -> ts of the first sample that showed it
    closed: threading.Event = field(default_factory=threading.Event)

    @property
    def ref(self) -> str:
        return f"{NAMESPACE}/{self.name}"

    def start(self, sensor_flags: list[str], remotes: set[tuple[str, int]], acts: list[dict[str, Any]]) -> None:
        """Start the demo pod; with `remotes` (address, TCP port), an attacker's host that owns those addresses and
        listens on those ports, joined to the pod by a veth pair (the pod's only route out); with `acts`, what the
        pod plays on the `scenario` trigger."""
        self.work.mkdir(parents=True, exist_ok=True)
        sensor = [
            sys.executable, "-m", "trainguard", "sensor", f"--pod={self.ref}", f"--address={self.ip}",
            f"--port={SENSOR_PORT}", "--interval=1", *sensor_flags,
        ]  # fmt: skip
        (self.work / "acts.json").write_text(json.dumps(acts))
        argv = ["unshare", "--net", "--pid", "--fork", "--mount-proc", "--kill-child", sys.executable, "-m"]
        argv += ["trainguard.cli.demo_pod", str(self.work), ATTACKER, json.dumps(sensor), str(self.work / "gpu.in")]
        argv.append(str(self.work / "acts.json"))
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=(self.work / "unshare.log").open("wb"))
        self.pid1 = _pid1(self.process, self.name)
        if remotes:
            ports = sorted({str(port) for _, port in remotes})
            self.attacker = subprocess.Popen(
                ["unshare", "--net", "--fork", "--kill-child", sys.executable, "-c", LISTENER, *ports],
                stdout=(self.work / "attacker.log").open("wb"),
                stderr=subprocess.STDOUT,
            )
            attacker_pid = _pid1(self.attacker, "the attacker's host")
            a, b = f"tgd{self.pid1}a", f"tgd{self.pid1}b"
            inside, outside = ["nsenter", "-t", str(self.pid1), "-n"], ["nsenter", "-t", str(attacker_pid), "-n"]
            commands = [
                ["ip", "link", "add", a, "type", "veth", "peer", "name", b],
                ["ip", "link", "set", a, "netns", str(self.pid1)],
                ["ip", "link", "set", b, "netns", str(attacker_pid)],
                [*inside, "ip", "addr", "add", f"{POD_SIDE}/24", "dev", a],
                [*inside, "ip", "link", "set", a, "up"],
                [*inside, "ip", "route", "add", "default", "dev", a],
                [*outside, "ip", "addr", "add", f"{ATTACKER}/24", "dev", b],
                [*outside, "ip", "link", "set", b, "up"],
            ]
            for address in sorted({address for address, _ in remotes} - {ATTACKER}):
                commands.append([*outside, "ip", "addr", "add", f"{address}/32", "dev", b])
            commands.append([*outside, "ip", "route", "add", "default", "dev", b])
            for cmd in commands:
                done = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise DemoError(f"{' '.join(cmd)}: {done.stderr.strip()}")
        try:
            self.forwarder = Forwarder(self.ip, SENSOR_PORT, self.pid1)
        except OSError as error:
            raise DemoError(f"{self.ip}:{SENSOR_PORT}: {error.strerror} (another process has it)") from None

    def state(self) -> dict[str, Any]:
        with contextlib.suppress(OSError, ValueError):
            return dict(json.loads((self.work / "state.json").read_text()))
        return {}

    def trigger(self, phase: str) -> None:
        if self.cluster is None:
            (self.work / phase).touch()
            return
        # The real node: the workload is a container; the phase file is made there, its state copied here.
        touch = ["sh", "-c", f": > /tmp/demo/{phase}"]  # busybox without touch
        self.cluster.kubectl("exec", "-n", NAMESPACE, self.name, "-c", "trainer", "--", *touch)
        deadline = time.time() + 15
        while time.time() < deadline:
            state = self.cluster.call("exec", "-n", NAMESPACE, self.name, "-c", "trainer", "--", "cat",
                                      "/tmp/demo/state.json").stdout  # fmt: skip
            if f'"{phase}"' in state:
                (self.work / "state.json").write_text(state)
                return
            time.sleep(0.3)
        raise DemoError(f"{self.name}: the {phase} did not start within 15 s")

    def follow(self, samples: queue.Queue[tuple[DemoPod, Sample]]) -> None:
        """Read the sensor's stream through the pod's IP, as the operator does (signed lines where keyed), every
        sample of it, in a thread of its own; reconnect until stopped."""

        def read() -> None:
            if self.netns:  # the real node: this thread joins the node's network namespace, where pod IPs route
                _join_netns(self.netns)
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
            if not (pod.work / "attacker.log").exists() or "cut" in pod.seen or "tunnel" not in pod.seen:
                continue
            with contextlib.suppress(OSError):
                if "closed" in (pod.work / "attacker.log").read_text():
                    pod.seen["cut"] = time.time()
                    self.out.line("attacker", f"{pod.remote}:22: the tunnel from {pod.name} was closed (cut)", "32")

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
        for act in state.get("acts", []):  # a scenario's processes, the first sample that shows each
            proc = next((p for p in sample.processes if p.pid == act["pid"]), None)
            if proc is not None and f"act-{proc.pid}" not in pod.seen:
                pid = proc.pid
                pod.seen[f"act-{pid}"] = sample.ts
                socks = [f"{c.remote.address}:{c.remote.port} {c.state}" for c in sample.connections if c.pid == pid]
                socks += [f"listening on {s.local.port}" for s in sample.listening if s.pid == pid]
                self.out.line(
                    "sample",
                    f"{pod.name} seq {sample.seq}: process {proc.name} pid {proc.pid} ({' '.join(proc.argv[2:])})"
                    + (f": {', '.join(socks)}" if socks else ""),
                    "33",
                    at=sample.ts,
                )
        tunnel = [c for c in sample.connections if c.remote.address == pod.remote]
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
                f"{pod.name} seq {sample.seq}: the tunnel to {pod.remote}:22 is gone (cut in the pod)",
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
    names = ", ".join(s["trace"].removesuffix(".jsonl") for s in json.loads(
        (ROOT / "examples" / "traces" / "scenarios.json").read_text()))  # fmt: skip
    parser.add_argument("--scenario", default=os.environ.get("DEMO_SCENARIO", "rome"), help="rome (default) or a "
                        f"scenario of examples/traces/scenarios.json ({names}; DEMO_SCENARIO): worker i plays the "
                        "recording's i-th pod with real processes and sockets, its GPU telemetry replayed, its sensor "
                        f"gaps by stopping or restarting the real sensor; {NOT_PLAYED}")  # fmt: skip
    parser.add_argument("--keep", action="store_true", default=os.environ.get("DEMO_KEEP") == "1",
                        help="leave the control plane, operator, demo pods and sensors running in the background "
                        "and print the KUBECONFIG line (DEMO_KEEP=1); stop them with --stop")  # fmt: skip
    parser.add_argument("--real-node", action="store_true", default=os.environ.get("DEMO_REAL_NODE") == "1",
                        help="play rome on the real node tier (kubelet, containerd, kube-router; scripts/realnode), "
                        "where NetworkPolicy really isolates the pod and the tunnel is really cut (DEMO_REAL_NODE=1; "
                        "root; exits 2 saying why where the machine does not allow it)")  # fmt: skip
    parser.add_argument("--stop", nargs="?", const="", default=None, metavar="RUN_DIR", help="stop every demo left "
                        "running by DEMO_KEEP=1 (make demo-stop), or only the one of RUN_DIR: the job, the operator, "
                        "the demo pods and sensors, the control plane; says what it stopped")  # fmt: skip
    parser.add_argument("--summary", type=Path, default=os.environ.get("DEMO_SUMMARY") or None,
                        help="write the outcome as JSON here (DEMO_SUMMARY)")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=float(os.environ.get("DEMO_TIMEOUT", "60")),
                        help="seconds each phase may take (DEMO_TIMEOUT, default 60)")  # fmt: skip


@dataclass
class Scenario:
    """A recorded scenario of examples/traces/, played for real: worker *i* plays the trace's *i*-th pod. Its sensor
    replays that pod's GPU readings (looping); the demo pod runs the processes that appear in the recording after its
    first sample, with their sockets, and stops or kills its sensor where the recording has a gap (`trace_acts`)."""

    name: str
    kind: str
    expect: set[str]  # every rule the scenario expects, of any pod
    expect_by_pod: dict[int, set[str]]  # worker index -> the rules expected of it
    policy: dict[str, Any]  # the scenario's policy (the job takes it instead of rome-lockdown's)
    gpus: list[list[list[dict[str, Any]]]]  # per pod of the trace, in order: each tick's `gpus`
    acts: list[list[dict[str, Any]]]  # per pod of the trace, in order: what its demo pod plays (trace_acts)

    @property
    def length(self) -> float:
        """Seconds from the scenario's trigger to its last act."""
        return max((a["at"] + a.get("seconds", 0.0) for acts in self.acts for a in acts), default=0.0)


#: What a recording holds that the demo cannot play with real processes (said in `--help` and docs).
NOT_PLAYED = (
    "not played for real: the recording's baseline processes (the demo's trainer stands in for them), connections "
    "to the job's other pods and into the pod (e.g. hidden-listener's download from another pod), and IPv6 sockets"
)


def trace_acts(per_pod: list[list[Sample]], skip: frozenset[str]) -> list[list[dict[str, Any]]]:
    """What each pod's demo pod plays, from its samples (in order): a `process` act for each process that was not in
    the first sample (its name and argv; the listeners and outbound connections it owns over the whole recording,
    except to addresses in `skip`, the job's pods and DNS; a pid-less TIME_WAIT to a new remote becomes a beacon
    process), a `freeze` or `restart` of the sensor where two samples are more than 3 s apart (seq going back: it
    was restarted). Offsets in seconds from the first act of any pod."""
    played: list[list[dict[str, Any]]] = []
    for samples in per_pod:
        if not samples:
            played.append([])
            continue
        first = samples[0]
        known = {(p.name, tuple(p.argv)) for p in first.processes}
        remotes = {(c.remote.address, c.remote.port) for c in first.connections}
        acts: list[dict[str, Any]] = []
        by_pid: dict[int, dict[str, Any]] = {}
        beacon: dict[str, Any] | None = None
        previous: Sample | None = None
        for sample in samples:
            if previous is not None and (sample.seq < previous.seq or sample.ts - previous.ts > 3):
                kind = "restart" if sample.seq < previous.seq else "freeze"
                acts.append({"at": previous.ts + 1, "kind": kind, "seconds": round(sample.ts - previous.ts - 1, 1)})
            previous = sample
            for proc in sample.processes:
                if (proc.name, tuple(proc.argv)) in known or proc.pid in by_pid:
                    continue
                known.add((proc.name, tuple(proc.argv)))
                stdin = proc.stdin is not None and proc.stdin.kind == "socket"
                argv = list(proc.argv) or [proc.name]
                act: dict[str, Any] = {"at": sample.ts, "kind": "process", "name": proc.name, "argv": argv,
                                       "connect": [], "listen": [], "stdin": stdin}  # fmt: skip
                by_pid[proc.pid] = act
                acts.append(act)
            for listener in sample.listening:
                owner = by_pid.get(listener.pid) if listener.pid is not None else None
                port = listener.local.port
                if owner is not None and ":" not in listener.local.address and port not in owner["listen"]:
                    owner["listen"].append(port)
            for c in sample.connections:
                address, port = c.remote.address, c.remote.port
                if address in skip or ":" in address or c.proto not in ("tcp", "udp"):
                    continue
                owner = by_pid.get(c.pid) if c.pid is not None else None
                if owner is None and c.pid is None and c.state == "TIME_WAIT" and (address, port) not in remotes:
                    if beacon is None:
                        beacon = {"at": sample.ts, "kind": "process", "name": "python3", "argv": ["python3"],
                                  "connect": [], "listen": [], "stdin": False}  # fmt: skip
                        acts.append(beacon)
                    owner = beacon
                if owner is None or c.local.port in owner["listen"]:
                    continue  # a baseline process's socket, or a connection into the pod
                entry = {"proto": c.proto, "address": address, "port": port,
                         "state": "TIME_WAIT" if c.state == "TIME_WAIT" else "ESTABLISHED"}  # fmt: skip
                if entry not in owner["connect"]:
                    owner["connect"].append(entry)
        played.append(acts)
    start = min((float(a["at"]) for acts in played for a in acts), default=0.0)
    for acts in played:
        for act in acts:
            act["at"] = round(float(act["at"]) - start, 1)
        acts.sort(key=lambda a: float(a["at"]))
    return played


def remotes_of(acts: list[dict[str, Any]]) -> set[tuple[str, int]]:
    """The TCP (address, port) pairs a pod's acts connect to: the attacker's host must own and serve them."""
    return {(c["address"], c["port"]) for a in acts for c in a.get("connect", []) if c["proto"] == "tcp"}


def load_scenario(name: str) -> Scenario | None:
    if name == "rome":
        return None
    traces = ROOT / "examples" / "traces"
    table = {s["trace"].removesuffix(".jsonl"): s for s in json.loads((traces / "scenarios.json").read_text())}
    if name not in table:
        raise DemoError(f"DEMO_SCENARIO={name}: not a scenario; choose rome or one of {', '.join(table)}")
    entry = table[name]
    per_pod: dict[str, list[Sample]] = {}
    for line in (traces / f"{name}.jsonl").read_text().splitlines():
        if line.strip():
            sample = parse_sample(line)
            per_pod.setdefault(sample.pod, []).append(sample)
    order = list(per_pod)
    expect_by_pod: dict[int, set[str]] = {}
    for e in entry["expect"]:
        expect_by_pod.setdefault(order.index(e["pod"]) if e["pod"] in order else 0, set()).add(e["rule"])
    context = entry.get("context", {})
    skip = frozenset(context.get("podIPs", [])) | frozenset(context.get("dnsResolvers", []))
    policy = yaml.safe_load((traces / entry["policy"]).read_text())["spec"]["policy"]
    return Scenario(
        name=name,
        kind=entry["kind"],
        expect={e["rule"] for e in entry["expect"]},
        expect_by_pod=expect_by_pod,
        policy=policy,
        gpus=[
            [[g.model_dump(by_alias=True, exclude_none=True) for g in s.gpus] for s in pod] for pod in per_pod.values()
        ],
        acts=trace_acts(list(per_pod.values()), skip),
    )


def play_scenario(scenario: Scenario, timeline: Timeline, timeout: float, until: Any) -> bool:
    """Trigger every pod's acts, wait for the expected outcome (or, for a benign scenario, the whole recording),
    and judge it from what the operator recorded in the API: each expected pod has one of its rules, every other
    pod has no violation and no quarantine; a benign scenario has none at all (the demo's own engine neither)."""
    pods, out = timeline.pods, timeline.out
    acted = [p for p in pods if p.index < len(scenario.acts) and scenario.acts[p.index]]
    played = ", ".join(f"{p.name}: {describe_acts(scenario.acts[p.index])}" for p in acted) or "no process or socket"
    out.line("phase", f"scenario {scenario.name} ({scenario.kind}), GPU telemetry replayed; plays {played}", "1")
    until("a few samples of each worker", lambda: min(timeline.seq.get(p.name, -1) for p in pods) >= 3)
    for pod in acted:
        pod.trigger("scenario")
    expected = {p.name: scenario.expect_by_pod.get(p.index, set()) for p in pods}

    def rules(pod: DemoPod) -> set[str]:
        return timeline.outcome[pod.name].rules

    def caught() -> bool:
        return all(rules(p) & want for p in pods if (want := expected[p.name]))

    wait = max(timeout, scenario.length + 30.0, max(len(t) for t in scenario.gpus) + 20.0)
    if scenario.kind == "benign" or not scenario.expect:
        until_end = time.time() + wait
        while time.time() < until_end:  # the whole recording, once
            timeline.poll()
            time.sleep(0.25)
    else:
        until(f"{', '.join(f'{n}: one of {sorted(r)}' for n, r in expected.items() if r)} recorded", caught, wait)
    timeline.poll()
    # The demo's own engine, for a benign scenario: its sensor.* decisions are left out (they judge the demo's
    # reading of the stream, whose reconnects on a loaded machine look like gaps; the operator reads its own).
    local = {p.name: {str(d.get("rule")) for d in timeline.local[p.name]} for p in pods}
    local_judged = {n: {r for r in rules if not r.startswith("sensor.")} for n, rules in local.items()}
    ok = True
    for pod in pods:
        want, got = expected[pod.name], rules(pod)
        quarantined = timeline.outcome[pod.name].quarantined_at is not None
        if want:
            good = bool(got & want)
            text = f"expected one of {sorted(want)}; the operator recorded {sorted(got) or 'nothing'}"
        else:
            good = not got and not quarantined and (scenario.kind != "benign" or not local_judged[pod.name])
            text = f"expected no violation; the operator recorded {sorted(got) or 'none'}" + (
                ", quarantined" if quarantined else ""
            )
        text += f" (the demo's engine: {sorted(local[pod.name]) or 'nothing'})"
        out.line("outcome", f"{pod.name}: {text}", "32" if good else "31;1")
        ok = ok and good
    return ok


def describe_acts(acts: list[dict[str, Any]]) -> str:
    parts = []
    for a in acts:
        if a["kind"] == "process":
            socks = [f"{c['state'].lower()} {c['proto']} {c['address']}:{c['port']}" for c in a["connect"]]
            socks += [f"listen {port}" for port in a["listen"]]
            stdin = ", stdin a socket" if a["stdin"] else ""
            parts.append(f"+{a['at']:g}s {a['name']}" + (f" ({'; '.join(socks)}{stdin})" if socks else ""))
        else:
            parts.append(f"+{a['at']:g}s sensor {'stopped' if a['kind'] == 'freeze' else 'killed'} {a['seconds']:g} s")
    return ", ".join(parts)


def _follow_listener(cluster: Cluster, log: Path, stop: threading.Event) -> None:
    """The real node: the listener pod's log (open/closed per connection) copied into `log`, twice a second."""

    def copy() -> None:
        while not stop.wait(0.5):
            result = cluster.call("logs", "-n", NAMESPACE, "listener")
            if result.returncode == 0:
                log.write_text(result.stdout)

    log.write_text("")
    threading.Thread(target=copy, daemon=True).start()


def _new_connection_blocked(cluster: Cluster, pod: str, listener: str) -> bool:
    """From the quarantined pod's trainer container, three tries at a new TCP connection to the listener: blocked
    when none opens (one probe can pass while kube-router applies the policy: each is retried a few times)."""
    probe = f"import socket; socket.create_connection(({listener!r}, 22), timeout=2); print('open')"
    deadline = time.time() + 20
    while time.time() < deadline:
        tries = [
            cluster.call("exec", "-n", NAMESPACE, pod, "-c", "trainer", "--", "python3", "-c", probe) for _ in range(3)
        ]
        if all("open" not in t.stdout for t in tries):
            return True
        time.sleep(1)
    return False


def _terminate(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up as Ctrl-C does


def _sensor_supports(flag: str) -> bool:
    result = subprocess.run(
        [sys.executable, "-m", "trainguard", "sensor", "--help"], capture_output=True, text=True, check=False
    )
    return flag in result.stdout


def free_cluster_cidr() -> str:
    """A /15 of 127.112.0.0/12 (one /16 per KWOK node) whose first pod addresses nobody serves on the sensor port:
    other demos on this machine (another checkout's `make test`, a kept demo) use the same range, and another process
    serving <podIP>:9400 would answer the operator in place of this demo's sensor. Random among the free ones."""
    free = []
    for second in range(112, 128, 2):
        try:
            for octet in (second, second + 1):
                for host in range(1, 5):
                    with socket.socket() as probe:
                        probe.bind((f"127.{octet}.0.{host}", SENSOR_PORT))
        except OSError:
            continue
        free.append(f"127.{second}.0.0/15")
    return random.choice(free) if free else "127.112.0.0/12"


#: In a run directory: what a demo left running with DEMO_KEEP=1 holds (what `--stop` ends).
KEPT = "demo.json"


def _fork_detached() -> int | tuple[int]:
    """DEMO_KEEP=1: the demo runs in a child in a session of its own (so it outlives the terminal and `make`), its
    output on the same terminal until it is left running. The parent waits for the child's exit status on a pipe
    (`_detach_now`) and returns it as `(code,)`; the child gets the pipe's write end. Ctrl-C in the parent stops the
    child (SIGTERM: it cleans up)."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        os.setsid()
        return write_end
    os.close(write_end)
    data = b""
    while True:
        try:
            chunk = os.read(read_end, 64)
        except KeyboardInterrupt:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)
            continue
        if not chunk:
            break
        data += chunk
    os.close(read_end)
    if data.strip().isdigit():
        return (int(data),)
    _, status = os.waitpid(child, 0)  # it ended without leaving anything running
    return (os.waitstatus_to_exitcode(status),)


def _detach_now(write_end: int, code: int, log: Path | None) -> None:
    """Tell the foreground process the exit status and let it go; from now on, output goes to `log`."""
    sys.stdout.flush()
    sys.stderr.flush()
    if log is not None:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        devnull = os.open(os.devnull, os.O_RDONLY)
        for target, source in ((0, devnull), (1, fd), (2, fd)):
            os.dup2(source, target)
        os.close(fd)
        os.close(devnull)
    with contextlib.suppress(OSError):
        os.write(write_end, str(code).encode())
        os.close(write_end)


def _alive(pid: int, needle: str) -> bool:
    """Whether `pid` runs (not a zombie) and its command line names `needle` (a pid the kernel gave to something
    else is not ours)."""
    with contextlib.suppress(OSError, IndexError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return False
        return needle in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return False


def _wait_gone(pid: int, needle: str, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not _alive(pid, needle):
            return True
        time.sleep(0.2)
    return False


def stop_kept(cache: Path, only: str) -> int:
    """`trainguard demo --stop [RUN_DIR]` (`make demo-stop`): end every demo left running with DEMO_KEEP=1 (or the
    one of RUN_DIR), say what it stopped; nothing left is not an error (idempotent)."""
    kept = [Path(only) / KEPT] if only else sorted(cache.glob(f"demo-*/{KEPT}"))
    kept = [k for k in kept if k.exists()]
    if not kept:
        print("trainguard demo --stop: no demo left running: nothing to stop")
        return 0
    code = 0
    for path in kept:
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # it was just stopped
        run_dir, pid = Path(state["runDir"]), int(state["pid"])
        what = (
            f"the demo (pid {pid}), the operator (pid {state.get('operator')}), {len(state.get('pods', []))} demo pod "
            f"processes with their sensors, the control plane and kwok (pids {state.get('controlPlane')}) of {run_dir}"
        )
        if _alive(pid, "trainguard"):
            print(f"stopping {what} ...", flush=True)
            os.kill(pid, signal.SIGTERM)  # it deletes the job while the operator runs, then stops everything
            if not _wait_gone(pid, "trainguard", 120):
                print(f"trainguard demo --stop: pid {pid} still running after 120 s; killing what it started")
                os.kill(pid, signal.SIGKILL)
        else:
            print(f"the demo (pid {pid}) had already ended; stopping what it left of {run_dir}")
        # Whatever is still there (the demo was killed, or did not finish): its processes by their recorded pids.
        for other, needle in [(state.get("operator"), "trainguard"), *((p, "") for p in state.get("pods", []))]:
            if other and _alive(int(other), needle) and not _wait_gone(int(other), needle, 5):
                os.kill(int(other), signal.SIGKILL)
        if (run_dir / "pid").exists() or (run_dir / "kwok.pid").exists():
            env = {**os.environ, "TRAINGUARD_RUN": str(run_dir)}
            with contextlib.suppress(DemoError):
                controlplane("down", env=env)
        path.unlink(missing_ok=True)
        left = [int(p) for p in [pid, state.get("operator"), *state.get("pods", []), *state.get("controlPlane", [])]
                if p and _alive(int(p), "")]  # fmt: skip
        if left:
            print(f"trainguard demo --stop: still running after the stop: pids {left}", file=sys.stderr)
            code = 1
        else:
            print(f"stopped {what}")
            if run_dir.exists():
                print(f"logs kept in {run_dir}")
    return code


def run(args: argparse.Namespace) -> int:
    out = Out(sys.stdout)
    if args.stop is not None:
        return stop_kept(Path(os.environ.get("TRAINGUARD_CACHE", Path.home() / ".cache" / "trainguard")), args.stop)
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
    if args.real_node:
        if scenario is not None:
            print("trainguard demo: DEMO_REAL_NODE=1 plays the rome story only (unset DEMO_SCENARIO)", file=sys.stderr)
            return 2
        try:
            reason = RealNodeTier.install()
        except DemoError as error:
            print(f"trainguard demo: DEMO_REAL_NODE=1: {error}", file=sys.stderr)
            return 1
        if reason:
            print(f"trainguard demo: DEMO_REAL_NODE=1 cannot run on this machine: {reason}", file=sys.stderr)
            return 2
    cache = Path(os.environ.get("TRAINGUARD_CACHE", Path.home() / ".cache" / "trainguard"))
    cache.mkdir(parents=True, exist_ok=True)
    detached: int | None = None
    if args.keep:
        parent = _fork_detached()
        if isinstance(parent, tuple):
            return parent[0]  # the foreground process: the demo's exit status, once it is left running
        detached = parent
    own_run = not os.environ.get("TRAINGUARD_RUN")
    run_dir = Path(os.environ.get("TRAINGUARD_RUN") or tempfile.mkdtemp(prefix="demo-", dir=cache))
    # Pods on 127.112.0.0/12 (one /16 per node): the tests' KWOK pods use 127.128.0.0/9, and another process on
    # this machine serving <podIP>:9400 would answer the operator in place of the demo's sensor.
    env = {**os.environ, "TRAINGUARD_RUN": str(run_dir)}
    if "TRAINGUARD_CLUSTER_CIDR" not in env:
        env["TRAINGUARD_CLUSTER_CIDR"] = free_cluster_cidr()
    signal.signal(signal.SIGTERM, _terminate)
    work = run_dir / "pods"
    pods: list[DemoPod] = []
    operator: subprocess.Popen[bytes] | None = None
    cluster: Cluster | None = None
    node: RealNodeTier | None = None
    summary: dict[str, Any] = {"scenario": args.scenario, "ok": False, "realNode": bool(args.real_node)}
    try:
        if args.real_node:
            out.step(
                "the real node tier: control plane, containerd, kubelet, kube-router (NetworkPolicy), in namespaces"
            )
            node = RealNodeTier.attach() or RealNodeTier.start(run_dir / "node")
            cluster = Cluster(run_dir, node.kubectl, node.kubeconfig, node.enter)
            out.raw(f"    node up, its namespaces held by pid {node.pid} (enter: {' '.join(node.enter)})")
        else:
            out.step("control plane with 2 KWOK nodes (first run builds it: 10-20 min, progress below)")
            controlplane("tools", env=env)
            controlplane("up", "--kwok-nodes", "2", env=env)
            cluster = Cluster(run_dir, str(cache / "bin" / "kubectl"), run_dir / "data" / "kubeconfig")
        out.step("CRD, namespace, admission policy and the operator (trainguard run)")
        cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "crd/agenttrainingjobs.trainguard.io", "--timeout=30s")
        cluster.kubectl("create", "namespace", NAMESPACE, check=False)
        oplog = (run_dir / "operator.log").open("wb")
        extra: list[str] = []
        if node is not None:  # the operator runs in the node's namespaces (it reaches every pod, as in a cluster)
            (run_dir / "master.key").write_text(os.urandom(32).hex())
            extra = [f"--sensor-image={SENSOR_IMAGE}", f"--sensor-master-key-file={run_dir / 'master.key'}",
                     "--dns-ip=10.96.0.10"]  # fmt: skip
        operator = subprocess.Popen(
            [*cluster.prefix, sys.executable, "-m", "trainguard", "run", f"--kubeconfig={cluster.kubeconfig}",
             f"--namespace={NAMESPACE}", "--admission-policy", "--metrics-port=0", "--resync=5", *extra],
            stdout=oplog, stderr=subprocess.STDOUT,
        )  # fmt: skip
        out.raw(f"    operator pid {operator.pid}, log {run_dir / 'operator.log'}")
        body = yaml.safe_load((ROOT / "examples" / "rome-lockdown.yaml").read_text())
        body["metadata"]["name"], body["metadata"]["namespace"] = JOB, NAMESPACE
        if scenario is not None:
            body["spec"]["policy"] = scenario.policy
        listener = ""
        if node is not None:
            pod_body = {
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "listener", "namespace": NAMESPACE,
                                                                 "labels": {"app": "attacker"}},
                "spec": {"terminationGracePeriodSeconds": 1, "automountServiceAccountToken": False,
                         "containers": [{"name": "listen", "image": SENSOR_IMAGE, "imagePullPolicy": "Never",
                                         "command": ["python3", "-u", "-c", LISTENER_POD, "22"]}]},
            }  # fmt: skip
            cluster.kubectl("apply", "-f", "-", stdin=json.dumps(pod_body))
            cluster.kubectl("wait", "-n", NAMESPACE, "--for=condition=Ready", "pod/listener", "--timeout=90s")
            listener = cluster.get("pod", "listener", "-n", NAMESPACE)["status"]["podIP"]
            out.raw(f"    the attacker's host: pod listener at {listener}:22 (an echo server that logs open/close)")
            real_node_job(body, listener)
        # KWOK reports a pod Running before the demo has started its sensor (the key is read from the API first):
        # a wider silence bound than the example's 10 s, so that a slow machine's start is not `sensor.silent`.
        body["spec"].setdefault("monitoring", {})["sensorSilenceSeconds"] = 30
        atj = AgentTrainingJob.model_validate(body)
        deadline = time.time() + 30
        while True:  # the admission policy is installed by the operator at start
            applied = cluster.call("apply", "-f", "-", stdin=json.dumps(body))
            if applied.returncode == 0:
                break
            if time.time() > deadline or operator.poll() is not None:
                raise DemoError(f"creating atj/{JOB}: {applied.stderr.strip()}")
            time.sleep(0.5)
        if scenario is not None:
            out.step(f"atj/{JOB}: 2 workers, the policy of scenario {scenario.name} (examples/traces/)")
        else:
            also = f" and the listener {listener}:22" if listener else ""
            out.step(
                f"atj/{JOB}: 2 workers, policy: egress only 198.51.100.0/24:443{also}, python on the GPUs, no tunnels"
            )
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
            secret = cluster.call(
                "get", "secret", f"{JOB}-sensor-key", "-n", NAMESPACE, "-o", "jsonpath={.data.sensor\\.key}"
            )
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
        if node is not None:
            for pod in pods:
                pod.netns, pod.cluster, pod.remote = f"/proc/{node.pid}/ns/net", cluster, listener
                pod.work.mkdir(parents=True, exist_ok=True)
                out.raw(
                    f"    {pod.name} ({pod.ip}): trainer container (demo_pod --container) + the real sensor sidecar"
                )
            _follow_listener(cluster, pods[0].work / "attacker.log", pods[0].closed)
        else:
            out.step("demo pods: real processes and sockets in their own pid+net namespaces, the real sensor in each")
        for pod in pods if node is None else []:
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
            acts = scenario.acts[pod.index] if scenario is not None and pod.index < len(scenario.acts) else []
            remotes = {(ATTACKER, 22)} if scenario is None and pod.index == 0 else remotes_of(acts)
            pod.start(flags, remotes, acts)
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
            where = "on GPU 0" if node is None else "(no GPU on the real node: its process gives it away)"
            out.line("phase", f"{worker1.name}: xmrig starts {where}", "1")
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
            out.line("phase", f"{worker0.name}: ssh -R to {worker0.remote}:22 (a real TCP connection)", "1")
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
            if node is None:
                until("xmrig on worker 1's GPU in the samples", lambda: "gpu" in worker1.seen, 15.0)
                ok = miner_caught and tunnel_caught
            else:  # no GPU on the real node: the miner is caught by its process; the isolation is kube-router's
                blocked = tunnel_caught and _new_connection_blocked(cluster, worker0.name, listener)
                summary["newConnectionBlocked"] = blocked
                out.line(
                    "isolated" if blocked else "open",
                    f"{worker0.name}: a new connection to {listener}:22 "
                    + ("fails: the NetworkPolicy (kube-router) isolates the pod" if blocked else "still opens"),
                    "32" if blocked else "31;1",
                )
                ok = miner_caught and tunnel_caught and "cut" in worker0.seen and blocked
        else:
            ok = play_scenario(scenario, timeline, args.timeout, until)
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
            workers=[p.name for p in pods],
            localDecisions=timeline.local,
            expect={p.name: sorted(scenario.expect_by_pod.get(p.index, set())) for p in pods} if scenario else {},
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
        if args.keep and detached is not None:
            kept = {
                "pid": os.getpid(),
                "runDir": str(run_dir),
                "kubeconfig": str(run_dir / "data" / "kubeconfig"),
                "operator": operator.pid if operator is not None else None,
                "pods": [x for p in pods for x in (p.process and p.process.pid, p.attacker and p.attacker.pid) if x],
                "controlPlane": [int(f.read_text()) for f in (run_dir / "pid", run_dir / "kwok.pid") if f.exists()]
                + ([node.process.pid] if node is not None and node.process is not None else []),
            }  # fmt: skip
            (run_dir / KEPT).write_text(json.dumps(kept))
            summary["kept"] = kept
            if args.summary:
                args.summary.write_text(json.dumps(summary, indent=2, default=str))
            out.step("DEMO_KEEP=1: left running in the background (control plane, operator, demo pods and sensors)")
            out.raw(f"export KUBECONFIG={cluster.kubeconfig if cluster else run_dir / 'data' / 'kubeconfig'}")
            out.raw(f"export PATH={cache / 'bin'}:$PATH")
            if node is not None:
                out.raw(
                    f"(the real node's API is only reachable in its namespaces: {' '.join(node.enter)} kubectl ...)"
                )
            out.raw(f"kubectl get atj,pods,networkpolicy -n {NAMESPACE}")
            out.raw("stop it with: make demo-stop  (or: trainguard demo --stop)")
            out.raw(f"(demo pid {os.getpid()}, its log from now on: {run_dir / 'demo.log'})")
            _detach_now(detached, 0 if summary["ok"] else 1, run_dir / "demo.log")
            detached = None  # its pipe is closed (the number may be reused): told once
            out = Out(sys.stdout)
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    signal.pause()  # until `trainguard demo --stop` sends SIGTERM
            out.raw(f"stopping (SIGTERM) at {time.strftime('%H:%M:%S')}")
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
        if node is not None and node.process is None and cluster is not None:
            cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)  # not our node: tidy
        if node is not None:
            node.stop()
        else:
            with contextlib.suppress(DemoError):
                controlplane("down", env=env)
        (run_dir / KEPT).unlink(missing_ok=True)
        if own_run and summary["ok"]:
            shutil.rmtree(run_dir, ignore_errors=True)
        elif not summary["ok"]:
            out.raw(f"logs kept in {run_dir}")
        if detached is not None:
            _detach_now(detached, 0 if summary["ok"] else 1, None)  # never kept (an error before): the same code
