"""The control plane program itself: clear failures on a bad port or data directory, clean stop on SIGTERM."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from tests.integration import controlplane
from tests.integration.conftest import Cluster
from tests.polling import wait_for


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(controlplane.binary()), "run", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_port_in_use_is_a_clear_error(control_plane: Cluster, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        result = _run("--data-dir", str(tmp_path / "data"), "--apiserver-port", str(port))

    assert result.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr, result.stderr


def test_unusable_data_dir_is_a_clear_error(control_plane: Cluster, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")

    result = _run("--data-dir", str(not_a_dir))

    assert result.returncode != 0
    assert f"data directory {not_a_dir} is unusable" in result.stderr, result.stderr


def test_data_dir_in_use_is_a_clear_error(control_plane: Cluster) -> None:
    result = _run("--data-dir", str(control_plane.plane.data_dir))

    assert result.returncode != 0
    assert "is in use by another control plane" in result.stderr, result.stderr


def test_sigterm_stops_every_component(control_plane: Cluster, tmp_path: Path) -> None:
    plane = controlplane.ControlPlane.start(controlplane.binary(), tmp_path / "data")
    try:
        assert plane.kubeconfig.is_file()
        children = plane.children()
        assert len(children) == 3, f"expected the apiserver, the controller-manager and the scheduler, got {children}"
    finally:
        code = plane.stop()
    assert code == 0, plane.stderr_path.read_text()
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in children), 5, "components outlived it")
    assert "etcd stopped" in plane.stderr_path.read_text()


@pytest.mark.parametrize("missing", ["--data-dir"])
def test_missing_data_dir_flag(control_plane: Cluster, missing: str) -> None:
    result = _run()

    assert result.returncode != 0
    assert f"{missing} is required" in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--cluster-cidr", "10.244.0.1/16"), "host bits set (the network is 10.244.0.0/16)"),
        (("--cluster-cidr", "fd00::/64"), "not an IPv4 network"),
        (("--cluster-cidr", "10.244.0.0/16", "--node-cidr-mask-size", "12"), "must be between the cluster prefix /16"),
    ],
)
def test_bad_pod_range_is_a_clear_error_before_anything_starts(
    control_plane: Cluster, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    result = _run("--data-dir", str(tmp_path / "data"), *args)
    assert result.returncode == 1
    assert message in result.stderr, result.stderr
    assert not (tmp_path / "data").exists(), "it created the data directory before refusing"


def test_a_missing_audit_policy_is_a_clear_error_before_anything_starts(control_plane: Cluster, tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    result = _run("--data-dir", str(tmp_path / "data"), "--audit-policy", str(missing))
    assert result.returncode == 1
    assert f"--audit-policy: stat {missing}: no such file or directory" in result.stderr, result.stderr
    assert not (tmp_path / "data").exists(), "it created the data directory before refusing"
