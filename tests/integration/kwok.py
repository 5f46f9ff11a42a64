"""KWOK (sigs.k8s.io/kwok) fake nodes for the local control plane (see docs/controlplane.md, "KWOK nodes").

kwok plays the kubelet of every node annotated ``kwok.x-k8s.io/node=fake``, following the stages in
controlplane/kwok/stages.yaml: pods bound to its nodes run (native sidecars started and ready) and stay Running
until deleted (they then go through Failed with terminated containers) or ended with the annotation
``kwok.trainguard.io/exit-code``. node-ipam gives each node a /16 of 127.128.0.0/9, so pod IPs are loopback
addresses: a local process bound to a pod's IP plays that pod (its sensor, say).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from tests.integration import controlplane
from tests.polling import wait_for

ROOT = Path(__file__).resolve().parents[2]
STAGES = ROOT / "controlplane" / "kwok" / "stages.yaml"
NODE = ROOT / "controlplane" / "kwok" / "node.yaml"
EXIT_CODE = "kwok.trainguard.io/exit-code"
"""Annotation that ends a running KWOK pod with this exit code (0: Succeeded, else Failed)."""


class KwokError(Exception):
    """kwok is missing, or it or its nodes did not come up."""


def binary() -> Path:
    path = controlplane.tool_bin() / "kwok"
    if not path.exists():
        raise KwokError(f"{path} is missing: run scripts/controlplane tools (make tools)")
    return path


def node_manifest(name: str) -> dict[str, Any]:
    """The Node object of controlplane/kwok/node.yaml with its name set."""
    body: dict[str, Any] = yaml.safe_load(NODE.read_text().replace("NAME", name))
    return body


@dataclass
class Kwok:
    """One running kwok process."""

    process: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def start(cls, kubeconfig: Path, log_path: Path) -> Kwok:
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    str(binary()),
                    f"--kubeconfig={kubeconfig}",
                    f"--config={STAGES}",
                    "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                    # Without a lease the node-lifecycle controller marks the nodes NotReady after 40 s.
                    "--node-lease-duration-seconds=40",
                    "--node-ip=127.0.0.2",
                    # Only used for a node without a podCIDR (node-ipam sets one): still loopback, never the
                    # service range 10.0.0.0/24 that kwok's own default would collide with.
                    "--cidr=127.127.0.0/16",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return cls(process=process, log_path=log_path)

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def node_ready(node: Any) -> bool:
    """Ready, with a podCIDR, and without the not-ready taint: the scheduler will place pods on it."""
    ready = any(c.type == "Ready" and c.status == "True" for c in (node.status.conditions or []))
    return ready and bool(node.spec.pod_cidr) and not node.spec.taints


def add_nodes(core: client.CoreV1Api, names: list[str], kwok: Kwok, timeout: float = 60.0) -> dict[str, str]:
    """Create the KWOK nodes and wait until kwok and the controllers have made each schedulable; returns
    name -> podCIDR."""
    for name in names:
        core.create_node(node_manifest(name))

    def all_ready() -> dict[str, str] | None:
        if kwok.process.poll() is not None:
            raise KwokError(f"kwok exited with status {kwok.process.returncode}:\n{kwok.log_tail()}")
        nodes = {n.metadata.name: n for n in core.list_node(label_selector="type=kwok").items}
        if all(name in nodes and node_ready(nodes[name]) for name in names):
            return {name: nodes[name].spec.pod_cidr for name in names}
        return None

    cidrs = wait_for(all_ready, timeout, f"KWOK nodes {names} not Ready, with a podCIDR and untainted")
    return cidrs


def end_pod(core: client.CoreV1Api, name: str, namespace: str, exit_code: int) -> None:
    """End a running KWOK pod as if its containers had exited with exit_code."""
    core.patch_namespaced_pod(name, namespace, {"metadata": {"annotations": {EXIT_CODE: str(exit_code)}}})
