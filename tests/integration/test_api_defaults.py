"""The API server and the models agree: server-side defaults, status subresource, client dry run."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.integration.conftest import Cluster
from trainguard.api import v1alpha1
from trainguard.api.validation import parse_agent_training_job

ROOT = Path(__file__).resolve().parents[2]


def test_kubectl_client_dry_run_accepts_the_crd(control_plane: Cluster) -> None:
    """The issue's acceptance command, against a real API server (client dry run needs its discovery)."""
    result = control_plane.kubectl("apply", "--dry-run=client", "-f", str(ROOT / "crds"))
    assert "agenttrainingjobs.trainguard.io" in result.stdout and "dry run" in result.stdout, result.stdout


def test_server_defaults_equal_model_defaults(cluster: Cluster, namespace: str) -> None:
    body = yaml.safe_load((ROOT / "examples" / "minimal.yaml").read_text())
    stored = cluster.custom.create_namespaced_custom_object(
        v1alpha1.GROUP, v1alpha1.VERSION, namespace, v1alpha1.PLURAL, body, field_validation="Strict"
    )
    # What the API server filled in is what the model assumes for absent fields ...
    assert stored["spec"]["policy"]["network"]["allowDNS"] is True
    assert stored["spec"]["policy"]["enforcement"]["debounce"] == {"samples": 3}
    assert stored["spec"]["monitoring"] == {
        "sampleIntervalSeconds": 1,
        "sensorSilenceSeconds": 10,
        "sensorGapToleranceSeconds": 10,
        "sensorGapWindowSeconds": 60,
    }
    from_server = parse_agent_training_job(stored)
    assert from_server.spec == parse_agent_training_job(body).spec
    # ... and the model keeps everything the server stores (no field it would drop or change).
    dumped = from_server.spec.model_dump(by_alias=True, exclude_none=True)
    assert _contained(stored["spec"], dumped), (stored["spec"], dumped)


def _contained(part: object, whole: object) -> bool:
    if isinstance(part, dict):
        return isinstance(whole, dict) and all(k in whole and _contained(v, whole[k]) for k, v in part.items())
    if isinstance(part, list):
        return isinstance(whole, list) and len(part) == len(whole) and all(map(_contained, part, whole))
    return part == whole


def test_status_is_a_subresource_validated_by_the_schema(cluster: Cluster, namespace: str) -> None:
    body = yaml.safe_load((ROOT / "examples" / "minimal.yaml").read_text())
    args = (v1alpha1.GROUP, v1alpha1.VERSION, namespace, v1alpha1.PLURAL)
    cluster.custom.create_namespaced_custom_object(*args, body)
    status = v1alpha1.AgentTrainingJobStatus(
        phase="Running",
        replicas=1,
        monitored_pods=1,
        violation_count=1,
        conditions=[
            v1alpha1.Condition(
                type="Violating", status="True", reason="NetTunnel", last_transition_time="2026-11-27T00:00:00Z"
            )
        ],
    )
    patched = cluster.custom.patch_namespaced_custom_object_status(
        *args, "minimal", {"status": status.model_dump(by_alias=True, exclude_none=True)}
    )
    assert patched["status"]["phase"] == "Running"
    assert parse_agent_training_job(patched).status == status
    # A spec change through the main resource does not touch status, and vice versa.
    got = cluster.custom.get_namespaced_custom_object(*args, "minimal")
    assert got["status"]["conditions"][0]["reason"] == "NetTunnel"
    printed = cluster.kubectl("get", "atj", "-n", namespace, "minimal", "--no-headers").stdout.split()
    assert printed[1:5] == ["Running", "1", "1", "1"], printed

