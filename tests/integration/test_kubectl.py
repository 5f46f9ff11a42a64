"""kubectl, built with the control plane, works against it and shows the CRD's printer columns."""

from __future__ import annotations

from pathlib import Path

from tests.integration.conftest import Cluster

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = ["NAME", "PHASE", "REPLICAS", "MONITORED", "VIOLATIONS", "QUARANTINED", "AGE"]


def test_get_atj_shows_printer_columns(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", str(ROOT / "examples" / "minimal.yaml"))

    out = cluster.kubectl("get", "atj", "-n", namespace).stdout.splitlines()

    assert out[0].split() == COLUMNS, out
    assert out[1].split()[0] == "minimal", out


def test_server_version_is_the_pinned_release(control_plane: Cluster) -> None:
    gomod = (ROOT / "controlplane" / "go.mod").read_text()
    pinned = next(line.split()[1] for line in gomod.splitlines() if line.strip().startswith("k8s.io/kubernetes v"))

    out = control_plane.kubectl("version", "-o", "yaml").stdout

    assert f"gitVersion: {pinned}" in out.split("serverVersion:")[1], out
