"""The Helm chart with a real helm against the real API server: it lints, installs the CRD and uninstalls."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.integration import controlplane
from tests.integration.conftest import Cluster
from trainguard.api import crdgen

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "trainguard"


def helm(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    helm_bin = controlplane.tool_bin() / "helm"
    assert helm_bin.exists(), f"{helm_bin} is missing: run `make tools` (scripts/controlplane tools)"
    result = subprocess.run(
        [str(helm_bin), *args], env=cluster.env(), capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_chart_lints(control_plane: Cluster) -> None:
    out = helm(control_plane, "lint", "--strict", str(CHART)).stdout
    assert "1 chart(s) linted, 0 chart(s) failed" in out, out


def test_chart_ships_the_generated_crd(control_plane: Cluster) -> None:
    # Rendered offline (helm assumes Kubernetes v1.20 unless told), for the release the control plane runs.
    gomod = (ROOT / "controlplane" / "go.mod").read_text()
    pinned = next(line.split()[1] for line in gomod.splitlines() if line.strip().startswith("k8s.io/kubernetes v"))
    rendered = helm(control_plane, "template", "tg", str(CHART), "--include-crds", "--kube-version", pinned).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    assert crds == [crdgen.crd()]


def test_chart_installs_and_uninstalls(cluster: Cluster, namespace: str) -> None:
    helm(cluster, "install", "tg", str(CHART), "--namespace", namespace, "--wait", "--timeout", "60s")
    status = yaml.safe_load(helm(cluster, "status", "tg", "--namespace", namespace, "-o", "yaml").stdout)
    assert status["info"]["status"] == "deployed"
    # The CRD the chart carries is the one the API server serves.
    served = cluster.extensions.read_custom_resource_definition("agenttrainingjobs.trainguard.io")
    assert served.spec.names.short_names == ["atj"]
    helm(cluster, "uninstall", "tg", "--namespace", namespace, "--wait")
    listed = helm(cluster, "list", "--namespace", namespace, "-q").stdout.split()
    assert "tg" not in listed
    # Helm never deletes CRDs from crds/ (so AgentTrainingJobs survive an uninstall).
    assert cluster.extensions.read_custom_resource_definition("agenttrainingjobs.trainguard.io")
