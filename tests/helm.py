"""The Helm chart, rendered by the real helm (`make tools` builds it into the cache), for unit and integration tests."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "trainguard"
CACHE = Path(os.environ.get("TRAINGUARD_CACHE", Path.home() / ".cache" / "trainguard"))
HELM = CACHE / "bin" / "helm"

#: Every optional part of the chart switched on.
ALL_ON = {
    "serviceMonitor.enabled": "true",
    "sensorPodMonitor.enabled": "true",
    "prometheusRule.enabled": "true",
    "dashboard.enabled": "true",
}


def kube_version() -> str:
    """The release the control plane runs (helm assumes v1.20 offline, which the chart's kubeVersion refuses)."""
    gomod = (ROOT / "controlplane" / "go.mod").read_text()
    return next(line.split()[1] for line in gomod.splitlines() if line.strip().startswith("k8s.io/kubernetes v"))


def helm_bin() -> Path:
    if not HELM.exists():
        pytest.skip(f"helm is not installed at {HELM}: run `make tools` (scripts/controlplane tools)")
    return HELM


def helm(*args: str, env: Mapping[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(helm_bin()), *args], env=dict(env or os.environ), capture_output=True, text=True, timeout=120, check=False
    )
    if check:
        assert result.returncode == 0, f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def set_args(values: Mapping[str, str]) -> list[str]:
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


def template(
    values: Mapping[str, str] | None = None, namespace: str = "trainguard-system", extra: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """`helm template` with the given --set values, as a list of objects."""
    out = helm(
        "template", "tg", str(CHART), "--namespace", namespace, "--kube-version", kube_version(),
        *set_args(values or {}), *extra,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def template_error(values: Mapping[str, str], extra: Sequence[str] = ()) -> str:
    """`helm template` that must fail: its error output."""
    result = helm(
        "template", "tg", str(CHART), "--kube-version", kube_version(), *set_args(values), *extra, check=False
    )
    assert result.returncode != 0, f"helm template {values} rendered:\n{result.stdout[:2000]}"
    return result.stderr


def by_kind(docs: Sequence[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: Sequence[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"{len(found)} {kind} rendered"
    return found[0]
