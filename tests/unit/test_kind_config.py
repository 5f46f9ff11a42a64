"""kind-config.yaml (kind cannot run on the project's machines: its shape is what can be checked here)."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
KIND = ROOT / "kind-config.yaml"


def test_one_control_plane_two_workers_and_no_default_cni() -> None:
    config = yaml.safe_load(KIND.read_text())
    assert config["kind"] == "Cluster"
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert [n["role"] for n in config["nodes"]] == ["control-plane", "worker", "worker"]
    # kindnet does not enforce NetworkPolicy: a CNI that does must replace it.
    assert config["networking"]["disableDefaultCNI"] is True


def test_it_says_how_to_install_the_cni_that_replaces_kindnet() -> None:
    text = KIND.read_text()
    assert "kind create cluster --config kind-config.yaml" in text
    assert "calico.yaml" in text
    assert "192.168.0.0/16" in text and yaml.safe_load(text)["networking"]["podSubnet"] == "192.168.0.0/16"
