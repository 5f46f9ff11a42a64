"""The install split: the base dependencies (the sensor image) carry neither kopf nor the Kubernetes client, and
every dependency is pinned in constraints.txt (what CI and the images install with)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def _names(requirements: list[str]) -> set[str]:
    return {re.sub(r"[-_.]+", "-", Requirement(r).name).lower() for r in requirements}


def _project() -> dict[str, object]:
    return dict(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"])


def test_the_sensor_install_has_no_kopf_and_no_kubernetes_client() -> None:
    base = _names(list(_project()["dependencies"]))  # type: ignore[call-overload]
    assert not base & {"kopf", "kubernetes"}, base
    operator = _names(_project()["optional-dependencies"]["operator"])  # type: ignore[index]
    assert {"kopf", "kubernetes"} <= operator


def test_every_dependency_is_pinned_in_the_constraints() -> None:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    project = _project()
    extras = project["optional-dependencies"]  # type: ignore[assignment]
    wanted = _names(list(project["dependencies"]))  # type: ignore[call-overload]
    for extra in extras.values():  # type: ignore[attr-defined]
        wanted |= _names([r for r in extra if not r.startswith("trainguard")])
    missing = sorted(wanted - set(pins))
    assert not missing, f"not pinned in constraints.txt (run make constraints): {missing}"
