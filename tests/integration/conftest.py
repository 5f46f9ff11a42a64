"""Fixtures for the integration tests: a real Kubernetes control plane (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler built from controlplane/) for the whole session (`control_plane`; `cluster` is
the same with crds/ installed; neither has a node), a fresh namespace per test (`namespace`), and a second control
plane with KWOK nodes whose pods run and get 127.x addresses (`kwok_cluster`, `kwok_namespace`).

Nothing here is optional: if the control plane cannot be built or started, every integration test fails (errors in
setup); none is skipped.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from tests.integration import controlplane, kwok
from tests.polling import wait_for

ROOT = Path(__file__).resolve().parents[2]
CRDS = sorted((ROOT / "crds").glob("*.yaml"))
HERE = Path(__file__).resolve().parent

_build: dict[str, str] = {}  # "error": why scripts/controlplane build failed


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: runs against the local Kubernetes control plane (scripts/controlplane)"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/integration (before `-m` deselects)."""
    for item in items:
        if _is_integration(item):
            item.add_marker(pytest.mark.integration)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the control plane once the selection is final and only if an integration test was selected: here
    rather than in a fixture, so that a first build (minutes) does not count against a test's timeout."""
    if session.config.option.collectonly or not any(_is_integration(item) for item in session.items):
        return
    capture = session.config.pluginmanager.getplugin("capturemanager")
    try:
        with capture.global_and_fixture_disabled():
            controlplane.build()
    except controlplane.ControlPlaneError as error:
        _build["error"] = str(error)


def _is_integration(item: pytest.Item) -> bool:
    return HERE in Path(str(item.path)).parents


@dataclass
class Cluster:  # the plane, clients and tools; KwokCluster adds nodes
    """The running control plane and clients for it, authenticated as the admin (system:masters)."""

    plane: controlplane.ControlPlane
    api: client.ApiClient
    core: client.CoreV1Api
    batch: client.BatchV1Api
    rbac: client.RbacAuthorizationV1Api
    admission: client.AdmissionregistrationV1Api
    extensions: client.ApiextensionsV1Api
    custom: client.CustomObjectsApi

    @property
    def kubeconfig(self) -> Path:
        return self.plane.kubeconfig

    def env(self) -> dict[str, str]:
        """Environment for subprocesses (kubectl, helm, the operator) that should talk to this cluster."""
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{controlplane.tool_bin()}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def kubectl(self, *args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run the kubectl built with the control plane against this cluster."""
        result = subprocess.run(
            [str(controlplane.tool_bin() / "kubectl"), *args],
            env=self.env(),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def client_for_token(self, token: str) -> client.ApiClient:
        """An API client that authenticates with a bearer token instead of the admin's."""
        admin = self.api.configuration
        cfg = client.Configuration()
        cfg.host = admin.host
        cfg.ssl_ca_cert = admin.ssl_ca_cert
        cfg.api_key = {"authorization": f"Bearer {token}"}
        return client.ApiClient(cfg)


def _crd_established(extensions: client.ApiextensionsV1Api, name: str) -> bool:
    crd = extensions.read_custom_resource_definition(name)
    return any(c.type == "Established" and c.status == "True" for c in (crd.status.conditions or []))


def crd_names() -> list[str]:
    return [yaml.safe_load(p.read_text())["metadata"]["name"] for p in CRDS]


@dataclass
class KwokCluster(Cluster):
    """A control plane of its own with KWOK nodes (name -> podCIDR) and the kwok process playing their kubelets."""

    kwok: kwok.Kwok | None = None
    nodes: dict[str, str] | None = None


def _clients(plane: controlplane.ControlPlane) -> dict[str, Any]:
    api = config.new_client_from_config(config_file=str(plane.kubeconfig))
    return {
        "plane": plane,
        "api": api,
        "core": client.CoreV1Api(api),
        "batch": client.BatchV1Api(api),
        "rbac": client.RbacAuthorizationV1Api(api),
        "admission": client.AdmissionregistrationV1Api(api),
        "extensions": client.ApiextensionsV1Api(api),
        "custom": client.CustomObjectsApi(api),
    }


def _start_plane(data_dir: Path) -> controlplane.ControlPlane:
    if "error" in _build:
        pytest.fail(f"the control plane could not be built: {_build['error']}", pytrace=False)
    try:
        return controlplane.ControlPlane.start(controlplane.binary(), data_dir)
    except controlplane.ControlPlaneError as error:
        pytest.fail(str(error), pytrace=False)


def _stop_plane(plane: controlplane.ControlPlane) -> None:
    children = plane.children() if plane.process.poll() is None else []
    code = plane.stop()
    assert code == 0, f"control plane exited with status {code} on SIGTERM; stderr in {plane.stderr_path}"
    alive = [pid for pid in children if Path(f"/proc/{pid}").exists()]
    assert not alive, f"control plane components still running after it stopped: {alive}"


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Start the control plane for the session and stop it at the end, checking that it stopped cleanly, components
    included. Nothing is installed: tests that need crds/ take `cluster`. It has no node: pods stay Pending (the
    fake kubelet of kubelet.py writes their status); tests that need pods to run take `kwok_cluster`."""
    plane = _start_plane(tmp_path_factory.mktemp("cp") / "data")
    try:
        yield Cluster(**_clients(plane))
    finally:
        _stop_plane(plane)


KWOK_NODES = ("kwok-0", "kwok-1")


@pytest.fixture(scope="session")
def kwok_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KwokCluster]:
    """A second control plane, with crds/ installed and two KWOK nodes (kwok-0, kwok-1) Ready and schedulable: the
    scheduler places pods on them and kwok runs them, with pod IPs from the nodes' 127.x/16 podCIDRs (see kwok.py).
    Apart from `control_plane`, so that the fake kubelet's pods there are never scheduled."""
    base = tmp_path_factory.mktemp("kwok")
    plane = _start_plane(base / "data")
    player: kwok.Kwok | None = None
    try:
        try:
            player = kwok.Kwok.start(plane.kubeconfig, base / "kwok.log")
        except kwok.KwokError as error:
            pytest.fail(str(error), pytrace=False)
        cluster = KwokCluster(**_clients(plane), kwok=player)
        _install_crds(cluster)
        cluster.nodes = kwok.add_nodes(cluster.core, list(KWOK_NODES), player)
        yield cluster
    finally:
        if player is not None:
            code = player.stop()
            assert code == 0, f"kwok exited with status {code} on SIGTERM; log in {player.log_path}"
        _stop_plane(plane)


@pytest.fixture
def kwok_namespace(kwok_cluster: KwokCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace in `kwok_cluster` for one test."""
    yield from _namespace(kwok_cluster, request)


def _install_crds(cluster: Cluster) -> None:
    assert CRDS, "crds/ holds no CRD to install"
    cluster.kubectl("apply", "--server-side", "--field-manager=trainguard-tests", *(f"-f={p}" for p in CRDS))
    for name in crd_names():
        wait_for(lambda n=name: _crd_established(cluster.extensions, n), 30, f"CRD {name} is not Established")


@pytest.fixture(scope="session")
def cluster(control_plane: Cluster) -> Cluster:
    """The session's control plane with crds/ installed (server-side apply) and Established."""
    _install_crds(control_plane)
    return control_plane


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


@pytest.fixture
def namespace(control_plane: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, with its default ServiceAccount in place (pods need it); deleted after."""
    yield from _namespace(control_plane, request)


def _namespace(control_plane: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    base = _slug(request.node.name)[:40].strip("-")
    body: dict[str, Any] = {"metadata": {"generateName": f"t-{base}-", "labels": {"trainguard.io/test": "true"}}}
    core = control_plane.core
    name: str = core.create_namespace(body).metadata.name

    def default_sa() -> bool:
        return any(sa.metadata.name == "default" for sa in core.list_namespaced_service_account(name).items)

    wait_for(default_sa, 30, f"the controller-manager made no default ServiceAccount in {name}")
    yield name
    core.delete_namespace(name, propagation_policy="Background")
