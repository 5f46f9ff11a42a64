"""`trainguard run` refuses what it cannot use with a message, not a traceback (no cluster needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trainguard", "run", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_a_missing_kubeconfig_is_a_message(tmp_path: Path) -> None:
    result = run(f"--kubeconfig={tmp_path / 'absent'}", "--metrics-port=0")
    assert result.returncode == 1
    assert "cannot reach a cluster" in result.stderr and "Traceback" not in result.stderr


def test_bad_flags_are_refused_by_the_parser() -> None:
    result = run("--resync=0")
    assert result.returncode == 2 and "must be > 0" in result.stderr
