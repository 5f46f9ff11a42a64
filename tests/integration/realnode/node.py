"""The real-node tier from the tests' side: start `scripts/realnode run`, run kubectl and probes inside its
namespaces (see docs/controlplane.md, "The real node")."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "scripts" / "realnode"
TOOLBOX = "trainguard.local/toolbox:1"
SENSOR = "trainguard.local/sensor:1"


class RealNodeError(Exception):
    """The real node could not be installed, started or stopped."""


def install() -> str | None:
    """Install what the tier needs (instant once cached). Returns why it cannot run here, or None; raises
    RealNodeError when the install itself broke."""
    result = subprocess.run([str(SCRIPT), "install"], stdout=subprocess.PIPE, text=True, check=False)
    if result.returncode == 3 and result.stdout.startswith("skip: "):
        return result.stdout.removeprefix("skip: ").strip()
    if result.returncode != 0:
        raise RealNodeError(f"scripts/realnode install failed with exit status {result.returncode}")
    return None


@dataclass
class RealNode:
    """One running `scripts/realnode run DIR`: a control plane, containerd, a kubelet and kube-router in the
    network and mount namespaces held by ``pid``."""

    process: subprocess.Popen[str]
    dir: Path
    pid: int
    kubeconfig: Path
    kubectl_path: Path
    name: str
    ip: str
    pod_cidr: str
    up_seconds: float

    @classmethod
    def start(cls, directory: Path, timeout: float = 120.0) -> RealNode:
        stderr_path = directory.parent / f"{directory.name}.stderr.log"
        with stderr_path.open("w") as stderr:
            process = subprocess.Popen(
                # SIGTERM when the test process dies, so that a killed run still tears the node down (the
                # holder's trap stops every component); it survives the execs down to the namespace holder.
                ["setpriv", "--pdeathsig", "TERM", "--", str(SCRIPT), "run", str(directory)],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        threading.Thread(target=pump, name="realnode-stdout", daemon=True).start()
        seen: dict[str, str] = {}
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                process.send_signal(signal.SIGTERM)
                process.wait(60)
                raise RealNodeError(f"real node not ready in {timeout:g} s:\n{stderr_path.read_text()}") from None
            if line is None:
                code = process.wait()
                raise RealNodeError(f"real node exited with {code} before ready:\n{stderr_path.read_text()}")
            if line == "ready":
                break
            key, _, value = line.partition(": ")
            seen[key] = value
        name, ip = seen["node"].split()
        return cls(
            process=process,
            dir=directory,
            pid=int(seen["pid"]),
            kubeconfig=Path(seen["kubeconfig"]),
            kubectl_path=Path(seen["kubectl"]),
            name=name,
            ip=ip,
            pod_cidr=seen["pod-cidr"],
            up_seconds=float(seen["up-seconds"]),
        )

    def stop(self, timeout: float = 90.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise RealNodeError(f"real node did not stop within {timeout:g} s of SIGTERM") from None

    def inside(self, *argv: str, stdin: str | None = None, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run a command in the node's network and mount namespaces (as the node itself)."""
        return subprocess.run(
            ["nsenter", f"--target={self.pid}", "--net", "--mount", *argv],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = self.inside(str(self.kubectl_path), f"--kubeconfig={self.kubeconfig}", *args, stdin=stdin)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def apply(self, namespace: str, *objects: dict[str, Any]) -> None:
        self.kubectl("-n", namespace, "apply", "-f", "-", stdin="\n---\n".join(json.dumps(o) for o in objects))

    def get(self, namespace: str, kind: str, name: str) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.kubectl("-n", namespace, "get", kind, name, "-o", "json").stdout)
        return body

    def pod_ip(self, namespace: str, pod: str) -> str:
        return str(self.get(namespace, "pod", pod)["status"]["podIP"])

    def wait_ready(self, namespace: str, *pods: str, timeout: int = 90) -> None:
        self.kubectl(
            "-n", namespace, "wait", "--for=condition=Ready", f"--timeout={timeout}s", *(f"pod/{p}" for p in pods)
        )

    def connects(self, namespace: str, pod: str, ip: str, port: int) -> bool:
        """One TCP probe from ``pod``: True when the server at ip:port answered "pong"."""
        result = self.kubectl("-n", namespace, "exec", pod, "--", "nc", "-w", "1", ip, str(port), check=False)
        return result.returncode == 0 and "pong" in result.stdout


def toolbox_pod(name: str, command: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A pod of the toolbox image (busybox: sh, nc, sleep, ...) running ``command`` with sh -c."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name, **(labels or {})}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "containers": [
                {"name": "main", "image": TOOLBOX, "imagePullPolicy": "Never", "command": ["sh", "-c", command]}
            ],
        },
    }


PONG = "nc -ll -p 8080 -e /bin/pong"
"""A server that answers every connection on port 8080 with "pong"."""
