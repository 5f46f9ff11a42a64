"""500 AgentTrainingJobs created at once on the local control plane: how long until every one has its Job, its
NetworkPolicies and Ready=True, and what the operator spent (CPU seconds, peak RSS).

Goal (issue 12): under 60 s on this machine, at most one core (CPU seconds / wall seconds <= 1).

The operator runs as `trainguard run` in its own process, scoped to one namespace; the clock starts at the
first create. Pods are not needed: Ready means the children are applied (pods stay Pending without a node, and
the Job controller still makes them, so the operator sees their events as it would in a cluster).

    .venv/bin/python bench/reconcile.py [--jobs 500] [--workers 4] [--kubeconfig PATH]

Without --kubeconfig it starts its own control plane (scripts/controlplane build must have run).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration import controlplane  # noqa: E402

GOAL_S = 60.0
ATJ = ("trainguard.io", "v1alpha1", "agenttrainingjobs")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.contextmanager
def control_plane(kubeconfig: str | None) -> Iterator[Path]:
    if kubeconfig:
        yield Path(kubeconfig)
        return
    controlplane.build()
    with tempfile.TemporaryDirectory(prefix="bench-reconcile-") as tmp:
        plane = controlplane.ControlPlane.start(controlplane.binary(), Path(tmp) / "data")
        try:
            yield plane.kubeconfig
        finally:
            plane.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def job_body(i: int) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "rome-lockdown.yaml").read_text())
    body["metadata"] = {"name": f"bench-{i:04d}"}
    body["spec"]["replicas"] = 1
    body["spec"]["template"]["spec"]["containers"][0]["resources"] = {}
    return body


def ready_count(custom: client.CustomObjectsApi, namespace: str) -> int:
    items = custom.list_namespaced_custom_object(*ATJ[:2], namespace, ATJ[2])["items"]
    n = 0
    for item in items:
        for c in (item.get("status") or {}).get("conditions") or []:
            if (
                c["type"] == "Ready"
                and c["status"] == "True"
                and c.get("observedGeneration") == item["metadata"]["generation"]
            ):
                n += 1
    return n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--workers", type=int, default=4, help="the operator's --workers")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--kubeconfig", help="use this cluster instead of starting a control plane")
    args = parser.parse_args()
    with control_plane(args.kubeconfig) as kubeconfig:
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PATH": f"{controlplane.tool_bin()}:{os.environ['PATH']}"}
        subprocess.run(
            ["kubectl", "apply", "--server-side", "-f", str(ROOT / "crds")], env=env, check=True, capture_output=True
        )
        subprocess.run(
            ["kubectl", "wait", "--for=condition=Established", "crd/agenttrainingjobs.trainguard.io"],
            env=env,
            check=True,
            capture_output=True,
        )
        api = config.new_client_from_config(config_file=str(kubeconfig))
        core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
        net, custom = client.NetworkingV1Api(api), client.CustomObjectsApi(api)
        namespace = f"bench-{int(time.time())}"
        core.create_namespace({"metadata": {"name": namespace}})
        port = free_port()
        log = Path(tempfile.gettempdir()) / f"{namespace}-operator.log"
        with log.open("wb") as out:
            operator = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "trainguard",
                    "run",
                    f"--kubeconfig={kubeconfig}",
                    f"--namespace={namespace}",
                    f"--metrics-port={port}",
                    "--metrics-address=127.0.0.1",
                    f"--workers={args.workers}",
                    "--log-level=WARNING",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            time.sleep(3)  # let kopf start its watches (not part of the measurement)
            cpu_before = cpu_seconds(operator.pid)
            started = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                list(
                    pool.map(
                        lambda i: custom.create_namespaced_custom_object(*ATJ[:2], namespace, ATJ[2], job_body(i)),
                        range(args.jobs),
                    )
                )
            created = time.monotonic() - started
            ready_at = jobs_at = policies_at = None
            while time.monotonic() - started < args.timeout:
                now = time.monotonic() - started
                if jobs_at is None and len(batch.list_namespaced_job(namespace).items) >= args.jobs:
                    jobs_at = now
                if policies_at is None and len(net.list_namespaced_network_policy(namespace).items) >= 5 * args.jobs:
                    policies_at = now
                if ready_count(custom, namespace) >= args.jobs:
                    ready_at = time.monotonic() - started
                    break
                time.sleep(0.5)
            cpu = cpu_seconds(operator.pid) - cpu_before
            rss = peak_rss_mib(operator.pid)
        finally:
            operator.terminate()
            operator.wait(30)
        if ready_at is None:
            print(f"not every job was Ready within {args.timeout:g} s; operator log: {log}")
            return 1
        print(f"jobs: {args.jobs}, operator workers: {args.workers}, machine: {os.cpu_count()} cores")
        print(f"created (16 client threads):            {created:6.1f} s")
        print(f"all Jobs exist:                         {jobs_at or ready_at:6.1f} s")
        print(f"all NetworkPolicies exist:              {policies_at or ready_at:6.1f} s")
        print(f"all Ready=True:                         {ready_at:6.1f} s   (goal < {GOAL_S:g} s)")
        print(f"operator CPU:                           {cpu:6.1f} s = {cpu / ready_at:.2f} cores   (goal <= 1)")
        print(f"operator peak RSS:                      {rss:6.1f} MiB")
        return 0 if ready_at < GOAL_S and cpu / ready_at <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
