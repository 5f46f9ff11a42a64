"""Fixtures for the real-node tests: one real node per session (`real_node`) and a fresh namespace on it per test
(`node_namespace`).

The tier needs root and installs Debian packages, a kubelet build and kube-router (scripts/realnode install). Where
it cannot (not root, a package refused, TRAINGUARD_REALNODE=0) every test here is skipped with the reason, and the
end of the run says how many and why. A node that was installed but does not come up is an error, never a skip.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.realnode import node
from tests.polling import wait_for

HERE = Path(__file__).resolve().parent
_state: dict[str, str] = {}  # "skip": why the tier cannot run here; "error": why its install broke; "up": seconds


def _selected(items: list[pytest.Item]) -> list[pytest.Item]:
    return [item for item in items if HERE in Path(str(item.path)).parents]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Install the tier once the selection is final (minutes the first time: kubelet ~1 min, kube-router ~2 min),
    outside any test's timeout, and only if a real-node test was selected."""
    if session.config.option.collectonly or not _selected(session.items):
        return
    if os.environ.get("TRAINGUARD_REALNODE", "1") == "0":
        _state["skip"] = "disabled by TRAINGUARD_REALNODE=0"
        return
    if os.geteuid() != 0:
        _state["skip"] = f"the real-node tier needs root (network and mount namespaces, a kubelet); uid {os.geteuid()}"
        return
    capture = session.config.pluginmanager.getplugin("capturemanager")
    try:
        with capture.global_and_fixture_disabled():
            reason = node.install()
    except node.RealNodeError as error:
        _state["error"] = str(error)
        return
    if reason:
        _state["skip"] = reason


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    here = [r for r in terminalreporter.stats.get("skipped", []) if HERE in Path(str(r.fspath)).resolve().parents]
    if "skip" in _state:
        terminalreporter.write_line(f"real-node tier: {len(here)} tests skipped: {_state['skip']}", yellow=True)
    elif "up" in _state:
        terminalreporter.write_line(f"real-node tier: node up in {_state['up']} s; {len(here)} tests skipped")


@pytest.fixture(scope="session")
def real_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[node.RealNode]:
    if "skip" in _state:
        pytest.skip(f"real-node tier: {_state['skip']}")
    if "error" in _state:
        pytest.fail(_state["error"], pytrace=False)
    try:
        started = node.RealNode.start(tmp_path_factory.mktemp("realnode") / "node")
    except node.RealNodeError as error:
        pytest.fail(str(error), pytrace=False)
    _state["up"] = f"{started.up_seconds:g}"
    try:
        yield started
    finally:
        code = started.stop()
        assert code == 0, f"the real node exited with status {code} on SIGTERM; logs in {started.dir}/logs"


@pytest.fixture
def node_namespace(real_node: node.RealNode, request: pytest.FixtureRequest) -> Iterator[str]:
    name = "t-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:50].strip("-")
    real_node.kubectl("create", "namespace", name)
    wait_for(
        lambda: real_node.kubectl("-n", name, "get", "serviceaccount", "default", check=False).returncode == 0,
        30,
        f"no default ServiceAccount in {name}",
    )
    yield name
    real_node.kubectl("delete", "namespace", name, "--wait=false")
