"""`DEMO_KEEP=1`: the demo leaves the control plane, the operator, the demo pods and their sensors running in the
background and returns, printing the KUBECONFIG line; kubectl works with it; `trainguard demo --stop` (what
`make demo-stop` runs) tears everything down, says what it stopped, leaves no process behind, and a second stop
has nothing to do. The scenario kept is hidden-listener (its outcome is asserted too: the fastest to play)."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.demo.run import SCENARIOS, demo, needs_root
from tests.demo.test_scenarios import assert_outcome
from tests.polling import wait_for

pytestmark = needs_root


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _stop(run_dir: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trainguard", "demo", "--stop", run_dir],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_keep_leaves_it_running_for_kubectl_and_stop_leaves_nothing(tmp_path: Path) -> None:
    result, summary = demo(tmp_path, DEMO_SCENARIO="hidden-listener", DEMO_KEEP="1", timeout=300)
    kept = summary.get("kept")
    assert kept, f"nothing kept:\n{result.stdout[-4000:]}\n{result.stderr[-3000:]}"
    try:
        assert result.returncode == 0, f"exit {result.returncode}:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
        assert_outcome(next(s for s in SCENARIOS if s["trace"] == "hidden-listener.jsonl"), summary)
        match = re.search(r"^export KUBECONFIG=(\S+)$", result.stdout, re.MULTILINE)
        assert match, result.stdout[-3000:]
        assert "make demo-stop" in result.stdout
        pids = [kept["pid"], kept["operator"], *kept["pods"], *kept["controlPlane"]]
        assert len(kept["pods"]) >= 2 and len(kept["controlPlane"]) == 2, kept
        assert all(_running(p) for p in pids), {p: _running(p) for p in pids}
        kubectl = Path.home() / ".cache" / "trainguard" / "bin" / "kubectl"
        got = subprocess.run(
            [str(kubectl), f"--kubeconfig={match.group(1)}", "get", "atj", "rome", "-n", "rome-demo", "-o", "name"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert got.returncode == 0 and got.stdout.strip() == "agenttrainingjob.trainguard.io/rome", got
        # The sensors still serve at the pods' addresses (the detached demo forwards them into the demo pods).
        ips = subprocess.run(
            [str(kubectl), f"--kubeconfig={match.group(1)}", "get", "pods", "-n", "rome-demo", "-o",
             "jsonpath={.items[*].status.podIP}"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout.split()  # fmt: skip
        assert len(ips) == 2, ips
        for ip in ips:
            with urllib.request.urlopen(f"http://{ip}:9400/healthz", timeout=5) as response:
                assert response.status == 200
    finally:
        stopped = _stop(kept["runDir"])
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert f"stopped the demo (pid {kept['pid']})" in stopped.stdout, stopped.stdout
    wait_for(lambda: not any(_running(p) for p in pids), 30, f"processes left behind of {pids}")
    assert not (Path(kept["runDir"]) / "demo.json").exists()
    again = _stop(kept["runDir"])
    assert again.returncode == 0 and "nothing to stop" in again.stdout, again.stdout + again.stderr
