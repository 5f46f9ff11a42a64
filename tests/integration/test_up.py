"""`scripts/controlplane up --kwok-nodes N` and `down`: the one command the demo and a developer use."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from pathlib import Path

from tests.integration import controlplane
from tests.polling import wait_for

SCRIPT = controlplane.SCRIPT


def _script(run: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TRAINGUARD_RUN": str(run)}
    return subprocess.run([str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=180, check=False)


def test_up_with_kwok_nodes_then_down(tmp_path: Path) -> None:
    run = tmp_path / "run"
    up = _script(run, "up", "--kwok-nodes", "2")
    try:
        assert up.returncode == 0, up.stderr
        assert "2 KWOK nodes Ready" in up.stderr, up.stderr
        assert f"export KUBECONFIG={run}/data/kubeconfig" in up.stdout
        kubectl = [str(controlplane.tool_bin() / "kubectl"), f"--kubeconfig={run}/data/kubeconfig"]
        nodes = json.loads(
            subprocess.run([*kubectl, "get", "nodes", "-o", "json"], capture_output=True, check=True).stdout
        )
        cidrs = {n["metadata"]["name"]: n["spec"]["podCIDR"] for n in nodes["items"]}
        assert set(cidrs) == {"kwok-0", "kwok-1"}
        assert all(ipaddress.ip_network(c).subnet_of(ipaddress.ip_network("127.128.0.0/9")) for c in cidrs.values())
        again = _script(run, "up", "--kwok-nodes", "3")  # on a running plane: adds what is missing
        assert again.returncode == 0 and "already running" in again.stderr and "3 KWOK nodes Ready" in again.stderr
        pids = [int((run / name).read_text()) for name in ("pid", "kwok.pid")]
    finally:
        down = _script(run, "down")
    assert down.returncode == 0, down.stderr
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids), 10, "up's processes outlived down")


def test_up_refuses_a_bad_node_count(tmp_path: Path) -> None:
    for bad in ("x", "129"):
        result = _script(tmp_path / "run", "up", "--kwok-nodes", bad)
        assert result.returncode == 1
        assert f"--kwok-nodes {bad}: want a number from 0 to 128" in result.stderr, result.stderr
        assert not (tmp_path / "run").exists(), "it started something before refusing"
