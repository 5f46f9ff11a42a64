"""`trainguard run` as a subprocess against the test control plane, as it runs in a cluster (its own process, its
own event loop), with JSON logs captured to a file and /metrics on a free loopback port."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.integration.conftest import Cluster
from tests.polling import wait_for

ATJ = ("trainguard.io", "v1alpha1", "agenttrainingjobs")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningOperator:
    process: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    def alive(self) -> bool:
        return self.process.poll() is None


@contextlib.contextmanager
def run_operator(
    cluster: Cluster, namespace: str, tmp_path: Path, *extra: str, kubeconfig: Path | None = None
) -> Iterator[RunningOperator]:
    """Start the operator for one namespace; on the way out delete the namespace's AgentTrainingJobs while it
    still runs (its finalizer must be released), then stop it with SIGTERM."""
    port = free_port()
    log_path = tmp_path / "operator.log"
    command = [
        sys.executable,
        "-m",
        "trainguard",
        "run",
        f"--kubeconfig={kubeconfig or cluster.kubeconfig}",
        f"--namespace={namespace}",
        "--metrics-address=127.0.0.1",
        f"--metrics-port={port}",
        "--log-format=json",
        "--resync=5",
        "--operator-namespace=trainguard-system",
        *extra,
    ]
    with started(command, log_path, port) as running:
        try:
            yield running
        finally:
            if running.alive():
                items = cluster.custom.list_namespaced_custom_object(*ATJ[:2], namespace, ATJ[2])["items"]
                for item in items:
                    cluster.custom.delete_namespaced_custom_object(
                        *ATJ[:2], namespace, ATJ[2], item["metadata"]["name"]
                    )
                wait_for(
                    lambda: not cluster.custom.list_namespaced_custom_object(*ATJ[:2], namespace, ATJ[2])["items"],
                    30,
                    "AgentTrainingJobs were not released by the operator's finalizer",
                )


@contextlib.contextmanager
def started(
    command: list[str], log_path: Path, port: int, env: dict[str, str] | None = None
) -> Iterator[RunningOperator]:
    """The operator's `command` as a process logging to `log_path`, once it serves /metrics on `port`; stopped with
    SIGTERM on the way out (killed after 20 s)."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ} if env is None else env
        )
    running = RunningOperator(process, log_path, port)
    try:
        wait_for(
            lambda: running.alive() and running.metrics(),
            30,
            f"the operator did not serve /metrics; log:\n{log_path.read_text()[-3000:]}",
            ignoring=(OSError,),
        )
        yield running
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
