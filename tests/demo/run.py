"""Running `trainguard demo` the way a user does, non-interactively, for the demo's tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = json.loads((ROOT / "examples" / "traces" / "scenarios.json").read_text())

needs_root = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="the demo needs root: each demo pod is its own pid+net namespace"),
    pytest.mark.skipif(
        shutil.which("unshare") is None or shutil.which("ip") is None, reason="the demo needs unshare and ip"
    ),
]


def demo(
    work: Path, *args: str, timeout: float = 480, **env_vars: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """`python -m trainguard demo ARGS` with DEMO_SUMMARY in `work`; its result and the summary it wrote."""
    summary = work / "summary.json"
    env = {k: v for k, v in os.environ.items() if k not in ("TRAINGUARD_RUN", "DEMO_KEEP", "DEMO_SCENARIO")}
    env.update({"DEMO_SUMMARY": str(summary), "DEMO_TIMEOUT": "45", "NO_COLOR": "1", **env_vars})
    result = subprocess.run(
        [sys.executable, "-m", "trainguard", "demo", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    (work / "output.txt").write_text(result.stdout + result.stderr)
    assert summary.exists(), f"the demo wrote no summary:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result, json.loads(summary.read_text())


def trace_pods(scenario: dict[str, Any]) -> list[str]:
    """The trace's pods in the order they first appear: worker i of the demo plays the i-th."""
    order: list[str] = []
    for line in (ROOT / "examples" / "traces" / scenario["trace"]).read_text().splitlines():
        if line.strip() and (pod := json.loads(line).get("pod")) not in order:
            order.append(pod)
    return order
