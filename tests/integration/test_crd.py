"""The generated CRD on a real API server: accepted, valid examples admitted, invalid ones rejected by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from tests.integration.conftest import CRDS, Cluster, crd_names

ROOT = Path(__file__).resolve().parents[2]
VALID = sorted((ROOT / "examples").glob("*.yaml"))
INVALID = sorted((ROOT / "examples" / "invalid").glob("*.yaml"))
EXPECT_PREFIX = "# expect:"


def _resource(kind: str) -> tuple[str, str, str]:
    """(group, storage version, plural) of the CRD in crds/ that defines ``kind``."""
    for path in CRDS:
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["kind"] == kind:
            version = next(v["name"] for v in crd["spec"]["versions"] if v.get("storage"))
            return crd["spec"]["group"], version, crd["spec"]["names"]["plural"]
    raise AssertionError(f"no CRD in crds/ defines kind {kind}")


def _create_dry_run(cluster: Cluster, namespace: str, body: dict[str, Any]) -> object:
    """Create the custom resource with server-side dry run and strict field validation, as `kubectl apply
    --dry-run=server` does: unknown fields are errors, not silently pruned."""
    group, version, plural = _resource(body["kind"])
    return cluster.custom.create_namespaced_custom_object(
        group, version, namespace, plural, body, dry_run="All", field_validation="Strict"
    )


def _expectation(path: Path) -> str:
    first = path.read_text().splitlines()[0] if path.read_text() else ""
    if not first.startswith(EXPECT_PREFIX):
        pytest.fail(f"{path.name} must start with '{EXPECT_PREFIX} <text the API server's message names>'")
    return first[len(EXPECT_PREFIX) :].strip()


def test_crds_established(cluster: Cluster) -> None:
    for name in crd_names():
        crd = cluster.extensions.read_custom_resource_definition(name)
        conditions = {c.type: c.status for c in crd.status.conditions}
        assert conditions.get("Established") == "True", conditions
        assert conditions.get("NamesAccepted") == "True", conditions


def test_there_are_examples() -> None:
    assert VALID, "examples/*.yaml is empty"
    assert INVALID, "examples/invalid/*.yaml is empty"


@pytest.mark.parametrize("path", VALID, ids=[p.name for p in VALID])
def test_valid_example_admitted(cluster: Cluster, namespace: str, path: Path) -> None:
    for body in yaml.safe_load_all(path.read_text()):
        if body and body.get("apiVersion", "").startswith("trainguard.io/"):
            created = _create_dry_run(cluster, namespace, body)
            assert isinstance(created, dict) and created["metadata"]["name"] == body["metadata"]["name"]


@pytest.mark.parametrize("path", INVALID, ids=[p.name for p in INVALID])
def test_invalid_example_rejected(cluster: Cluster, namespace: str, path: Path) -> None:
    expected = _expectation(path)
    body = yaml.safe_load(path.read_text())
    with pytest.raises(ApiException) as rejected:
        _create_dry_run(cluster, namespace, body)
    error = rejected.value
    assert error.status in (400, 422), f"{path.name}: expected a validation error, got {error.status}: {error.body}"
    message = str(error.body)
    assert expected in message, f"{path.name}: the API server's message does not name {expected!r}:\n{message}"
