"""The node tiers at load: how fast pods run on them and what each component costs.

KWOK: a control plane of its own, kwok and 4 KWOK nodes; one Job with parallelism 1,000 (the job controller
creates the pods, the scheduler binds them, kwok runs them). Goal (issue #11): all 1,000 Running with a pod IP
under 10 s after the Job is created.

Real node (root, and `scripts/realnode install` done; skipped with the reason otherwise): the time `scripts/realnode
run` takes to be ready, then 20 pods applied at once until all are Ready.

For each component: CPU seconds used during the measured phase and resident memory at its end (and the peak,
VmHWM). Run: `python bench/nodes.py` (or `make bench`).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kubernetes import client, config  # noqa: E402
from tests.integration import controlplane, kwok  # noqa: E402
from tests.integration.realnode import node as realnode  # noqa: E402

PODS = 1000
KWOK_NODES = 4
GOAL_S = 10.0
REAL_PODS = 20
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Usage:
    cpu_s: float
    rss_mib: float
    hwm_mib: float


def usage(pid: int) -> Usage | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    except (OSError, ValueError):
        return None
    cpu = (int(fields[11]) + int(fields[12])) / TICK
    return Usage(cpu, int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024)


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


def name_of(pid: int) -> str:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    prog = Path(argv[0].decode()).name
    sub = argv[1].decode() if len(argv) > 1 else ""
    return f"{prog} {sub}" if prog == "controlplane" else prog


def snapshot(pids: dict[str, int]) -> dict[str, Usage]:
    return {name: u for name, pid in pids.items() if (u := usage(pid)) is not None}


def report(title: str, before: dict[str, Usage], after: dict[str, Usage]) -> None:
    print(f"  {title}: CPU seconds during the phase, RSS at its end (peak)")
    for name, end in after.items():
        start = before.get(name, Usage(0.0, 0.0, 0.0))
        print(f"    {name:<34} {end.cpu_s - start.cpu_s:6.1f} CPU-s  {end.rss_mib:7.0f} MiB ({end.hwm_mib:.0f})")


def progress(core: client.CoreV1Api, namespace: str) -> tuple[int, int, int]:
    """Pods created, bound to a node, Running with a pod IP. From the apiserver's watch cache (resourceVersion 0)
    and parsed as plain JSON: the Python client's models would cost this 2-core machine seconds of CPU per list,
    taken from the components being measured."""
    response = core.list_namespaced_pod(
        namespace, label_selector="job-name=bench", resource_version="0", _preload_content=False
    )
    pods = json.loads(response.data)["items"]
    bound = sum(1 for p in pods if p["spec"].get("nodeName"))
    running = sum(1 for p in pods if p["status"].get("phase") == "Running" and p["status"].get("podIP"))
    return len(pods), bound, running


def bench_kwok(tmp: Path) -> bool:
    print(f"== KWOK: a Job of {PODS} pods on {KWOK_NODES} KWOK nodes")
    plane = controlplane.ControlPlane.start(controlplane.binary(), tmp / "kwok-data")
    player = kwok.Kwok.start(plane.kubeconfig, tmp / "kwok.log")
    try:
        api = config.new_client_from_config(config_file=str(plane.kubeconfig))
        core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
        print(f"  control plane ready in {plane.ready_seconds:.1f} s")
        started = time.monotonic()
        kwok.add_nodes(core, [f"kwok-{i}" for i in range(KWOK_NODES)], player)
        print(f"  {KWOK_NODES} nodes Ready and schedulable in {time.monotonic() - started:.1f} s")
        pids = {name_of(p): p for p in children(plane.process.pid)}
        pids = {"controlplane run (etcd)": plane.process.pid, **pids, "kwok": player.process.pid}
        core.create_namespace({"metadata": {"name": "bench"}})
        while not core.list_namespaced_service_account("bench").items:
            time.sleep(0.1)
        job: dict[str, Any] = {
            "metadata": {"name": "bench"},
            "spec": {
                "parallelism": PODS,
                "completions": PODS,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "initContainers": [{"name": "sensor", "image": "sensor", "restartPolicy": "Always"}],
                        "containers": [{"name": "trainer", "image": "trainer"}],
                    }
                },
            },
        }
        before = snapshot(pids)
        started = time.monotonic()
        batch.create_namespaced_job("bench", job)
        deadline = started + 120
        count, marks = 0, {}
        while time.monotonic() < deadline:
            created, bound, count = progress(core, "bench")
            now = time.monotonic() - started
            for what, n in (("created", created), ("bound", bound), ("running", count)):
                if n >= PODS and what not in marks:
                    marks[what] = now
            if count >= PODS:
                break
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        print("  all created {created:.1f} s, all bound {bound:.1f} s, all Running {running:.1f} s".format(**marks))
        after = snapshot(pids)
        verdict = "meets" if count >= PODS and elapsed < GOAL_S else "MISSES"
        print(
            f"  {count}/{PODS} Running with a pod IP {elapsed:.1f} s after the Job ({verdict} the goal, {GOAL_S:g} s)"
        )
        report("components", before, after)
        return verdict == "meets"
    finally:
        player.stop()
        plane.stop()


def tier_pids(holder: int) -> dict[str, list[int]]:
    """Every process under the real node's namespace holder, by program (etcd is in `controlplane run`)."""
    found: dict[str, list[int]] = {}
    stack = children(holder)
    while stack:
        pid = stack.pop()
        try:
            found.setdefault(name_of(pid), []).append(pid)
            stack += children(pid)
        except OSError:
            continue
    return found


def _cmdline_has(proc: Path, needle: bytes) -> bool:
    try:
        return b"containerd-shim" in (cmd := (proc / "cmdline").read_bytes()) and needle in cmd
    except OSError:
        return False


def bench_real_node(tmp: Path) -> None:
    print(f"== real node: bring-up, then {REAL_PODS} pods")
    if os.geteuid() != 0:
        print("  skipped: needs root")
        return
    reason = realnode.install()
    if reason:
        print(f"  skipped: {reason}")
        return
    started = time.monotonic()
    node = realnode.RealNode.start(tmp / "realnode")
    print(f"  up (control plane, containerd, kubelet Ready, kube-router) in {time.monotonic() - started:.1f} s wall")
    try:
        node.kubectl("create", "namespace", "bench")
        while node.kubectl("-n", "bench", "get", "sa", "default", check=False).returncode != 0:
            time.sleep(0.1)
        pods = [realnode.toolbox_pod(f"p{i}", "exec sleep 100000") for i in range(REAL_PODS)]
        grouped = tier_pids(node.pid)
        singles = {f"{name}": pids[0] for name, pids in grouped.items() if len(pids) == 1}
        before = snapshot(singles)
        started = time.monotonic()
        node.apply("bench", *pods)
        node.wait_ready("bench", *(f"p{i}" for i in range(REAL_PODS)), timeout=120)
        print(f"  {REAL_PODS} pods Ready {time.monotonic() - started:.1f} s after apply")
        after = snapshot(singles)
        report("components", before, after)
        # The shims daemonise (init adopts them), so they and the pods' processes are found by the socket of
        # this containerd on the shims' command lines.
        sock = str(node.dir / "containerd.sock").encode()
        shims = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline_has(p, sock)]
        per_pod: dict[str, list[int]] = {"containerd-shim-runc-v2": shims}
        for shim in shims:
            for name, pids in tier_pids(shim).items():
                per_pod.setdefault(name, []).extend(pids)
        print(f"  per-pod processes ({REAL_PODS} pods): RSS together")
        for name, pids in per_pod.items():
            total = sum(u.rss_mib for pid in pids if (u := usage(pid)) is not None)
            print(f"    {name:<34} {len(pids):3d} processes, {total:6.0f} MiB")
    finally:
        node.stop()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-nodes-") as tmp:
        ok = bench_kwok(Path(tmp))
        bench_real_node(Path(tmp))
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
