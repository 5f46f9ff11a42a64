"""The demo's tests: `make demo` run non-interactively against its own control plane."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: runs against the local Kubernetes control plane (scripts/controlplane)"
    )
