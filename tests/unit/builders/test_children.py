"""The builders: an AgentTrainingJob in, its children out (no cluster). State in, state out."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from trainguard import builders
from trainguard.builders import names, network

ROOT = Path(__file__).resolve().parents[3]
SETTINGS = builders.BuildSettings(
    sensor=builders.SensorSettings(image="registry.test/trainguard:1.2.3", port=9400, uid=65532),
    operator_namespace="trainguard-system",
)


def atj(example: str = "rome-lockdown.yaml", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((ROOT / "examples" / example).read_text())
    body["metadata"].update(namespace="team-a", uid="0000-1111")
    body["spec"].update(spec)
    return body


def pod_spec(children: builders.Children) -> dict[str, Any]:
    return children.job["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def test_the_job_is_indexed_with_one_pod_per_replica_and_a_final_quarantine() -> None:
    job = builders.build(atj(replicas=3), SETTINGS).job
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 3)
    assert spec["podReplacementPolicy"] == "Failed"
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    first = spec["podFailurePolicy"]["rules"][0]
    assert first == {
        "action": "FailIndex",
        "onPodConditions": [{"type": "trainguard.io/Quarantined", "status": "True"}],
    }
    assert "backoffLimitPerIndex" in spec  # FailIndex needs it


def test_the_sensor_is_a_native_sidecar_first_as_root_with_only_the_cuts_capabilities_and_the_key() -> None:
    spec = pod_spec(builders.build(atj(), SETTINGS))
    sensor = spec["initContainers"][0]
    assert sensor["name"] == "trainguard-sensor" and sensor["restartPolicy"] == "Always"
    assert sensor["image"] == "registry.test/trainguard:1.2.3"
    assert sensor["command"] == ["trainguard"] and sensor["args"][0] == "sensor"
    assert "--port=9400" in sensor["args"] and "--interval=1" in sensor["args"]
    sc = sensor["securityContext"]
    assert sc["runAsUser"] == 0 and sc["runAsGroup"] == 65532 and sc["readOnlyRootFilesystem"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["DAC_READ_SEARCH", "KILL", "NET_ADMIN", "SYS_PTRACE"]}
    assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["shareProcessNamespace"] is True
    key_file = "--key-file=/var/run/secrets/trainguard.io/sensor/sensor.key"
    assert key_file in sensor["args"]  # explicit: a pod without its key fails instead of serving /v1
    assert sensor["volumeMounts"] == [
        {"name": "trainguard-sensor-key", "mountPath": "/var/run/secrets/trainguard.io/sensor", "readOnly": True}
    ]
    (volume,) = [v for v in spec["volumes"] if v["name"] == "trainguard-sensor-key"]
    assert volume["secret"]["secretName"] == "rome-lockdown-sensor-key" and volume["secret"]["defaultMode"] == 0o400
    for container in spec["containers"] + spec["initContainers"][1:]:
        assert not any(m["name"] == "trainguard-sensor-key" for m in container.get("volumeMounts", []))


@pytest.mark.parametrize(
    "volume",
    [
        {"name": "trainguard-sensor-key", "emptyDir": {}},
        {"name": "steal", "secret": {"secretName": "rome-lockdown-sensor-key"}},
        {"name": "steal", "projected": {"sources": [{"secret": {"name": "rome-lockdown-sensor-key"}}]}},
    ],
)
def test_a_template_cannot_take_the_sensors_key_volume_or_secret(volume: dict[str, Any]) -> None:
    body = atj()
    body["spec"]["template"]["spec"]["volumes"] = [volume]
    with pytest.raises(builders.UnbuildableSpec, match="sensor"):
        builders.build(body, SETTINGS)


def test_workload_containers_lose_privilege_escalation_net_raw_and_net_admin() -> None:
    body = atj()
    body["spec"]["template"]["spec"]["containers"][0]["securityContext"] = {
        "capabilities": {"add": ["NET_ADMIN", "CHOWN"]}
    }
    body["spec"]["template"]["spec"]["initContainers"] = [{"name": "fetch", "image": "busybox:1.36"}]
    spec = pod_spec(builders.build(body, SETTINGS))
    for c in [spec["containers"][0], spec["initContainers"][1]]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert {"NET_RAW", "NET_ADMIN"} <= set(sc["capabilities"]["drop"])
    assert spec["containers"][0]["securityContext"]["capabilities"]["add"] == ["CHOWN"]


def test_kept_capabilities_are_not_dropped_and_are_announced_to_the_admission_policy() -> None:
    body = atj()
    body["spec"]["policy"]["workload"] = {"keepCapabilities": ["NET_RAW"]}
    children = builders.build(body, SETTINGS)
    drop = pod_spec(children)["containers"][0]["securityContext"]["capabilities"]["drop"]
    assert drop == ["NET_ADMIN"]
    annotations = children.job["spec"]["template"]["metadata"]["annotations"]
    assert annotations[names.KEEP_CAPABILITIES_ANNOTATION] == "NET_RAW"


def test_no_api_token_unless_the_policy_allows_one() -> None:
    children = builders.build(atj(), SETTINGS)
    assert children.service_account["automountServiceAccountToken"] is False
    assert pod_spec(children)["automountServiceAccountToken"] is False
    assert pod_spec(children)["serviceAccountName"] == "rome-lockdown-workload"
    body = atj()
    body["spec"]["policy"]["workload"] = {"mountServiceAccountToken": True}
    allowed = builders.build(body, SETTINGS)
    assert pod_spec(allowed)["automountServiceAccountToken"] is True
    assert allowed.job["spec"]["template"]["metadata"]["annotations"][names.TOKEN_ALLOWED_ANNOTATION] == "true"


def test_every_child_carries_the_job_label_and_a_controller_owner_reference() -> None:
    children = builders.build(atj(), SETTINGS)
    for child in children.ordered():
        assert child["metadata"]["labels"][names.JOB_LABEL] == "rome-lockdown"
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner["uid"] == "0000-1111" and owner["controller"] is True
    assert children.pod_labels[names.JOB_LABEL] == "rome-lockdown"
    assert children.ordered()[-1]["kind"] == "Job"  # NetworkPolicies first: no pod runs before its default deny


def test_the_policy_hash_changes_with_the_pods_and_the_sensor_image_not_with_network_policy() -> None:
    def digest(body: dict[str, Any], settings: builders.BuildSettings = SETTINGS) -> str:
        return str(builders.build(body, settings).job["metadata"]["annotations"][names.POLICY_HASH_ANNOTATION])

    base = digest(atj())
    assert base == digest(atj())
    assert base != digest(atj(replicas=5))
    other = builders.BuildSettings(sensor=builders.SensorSettings(image="registry.test/trainguard:9"))
    assert base != digest(atj(), other)
    body = atj()
    body["spec"]["policy"]["network"]["egress"] = []
    assert base == digest(body)  # NetworkPolicies change in place; the pods keep running


def test_one_label_revokes_every_allow() -> None:
    body = atj()
    body["spec"]["policy"]["network"]["listenPorts"] = [8080]
    policies = builders.build(body, SETTINGS).network_policies
    deny, *allows = policies
    assert deny["metadata"]["name"] == "rome-lockdown-default-deny"
    assert deny["spec"] == {
        "podSelector": {"matchLabels": {names.JOB_LABEL: "rome-lockdown"}},
        "policyTypes": ["Ingress", "Egress"],
    }
    assert {p["metadata"]["name"].removeprefix("rome-lockdown-") for p in allows} == {
        "dns",
        "intra-job",
        "egress",
        "listen",
        "sensor",
    }
    healthy = {names.JOB_LABEL: "rome-lockdown"}
    quarantined = {**healthy, names.QUARANTINED_LABEL: "true"}
    for policy in allows:
        selector = policy["spec"]["podSelector"]
        assert network.selector_matches(selector, healthy), policy["metadata"]["name"]
        if policy["metadata"]["name"] == "rome-lockdown-sensor":
            # The one allow a quarantine keeps (issue 13): the operator must reach the sensor to cut, and it is
            # ingress on the sensor port from the operator's namespace only.
            assert network.selector_matches(selector, quarantined)
            [rule] = policy["spec"]["ingress"]
            assert [list(peer) for peer in rule["from"]] == [["namespaceSelector"]]
            assert policy["spec"]["policyTypes"] == ["Ingress"]
            continue
        assert not network.selector_matches(selector, quarantined), policy["metadata"]["name"]
        for rule in policy["spec"].get("ingress", []) + policy["spec"].get("egress", []):
            for peer in rule.get("from", []) + rule.get("to", []):
                if "podSelector" in peer and "namespaceSelector" not in peer:  # a peer of this job
                    assert not network.selector_matches(peer["podSelector"], quarantined)
    assert network.selector_matches(deny["spec"]["podSelector"], quarantined)


def test_declared_egress_and_the_sensor_port_become_exactly_those_allows() -> None:
    body = atj()
    body["spec"]["policy"]["network"]["egress"] = [
        {"cidr": "10.0.0.1/8", "except": ["10.1.0.0/16"], "ports": [{"port": 443}]},
        {"namespaceSelector": {"matchLabels": {"team": "storage"}}},
    ]
    by_name = {p["metadata"]["name"]: p for p in builders.build(body, SETTINGS).network_policies}
    egress = by_name["rome-lockdown-egress"]["spec"]["egress"]
    assert egress[0] == {
        "to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
        "ports": [{"protocol": "TCP", "port": 443}],
    }
    assert egress[1] == {"to": [{"namespaceSelector": {"matchLabels": {"team": "storage"}}}]}
    sensor = by_name["rome-lockdown-sensor"]["spec"]["ingress"]
    assert sensor == [
        {
            "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "trainguard-system"}}}],
            "ports": [{"protocol": "TCP", "port": 9400}],
        }
    ]


def test_switched_off_allows_are_not_built() -> None:
    body = atj()
    body["spec"]["policy"]["network"].update(allowDNS=False, allowIntraJob=False, egress=[])
    parts = [p["metadata"]["name"] for p in builders.build(body, SETTINGS).network_policies]
    assert parts == ["rome-lockdown-default-deny", "rome-lockdown-sensor"]


def test_foreign_policies_that_select_the_pods_are_named() -> None:
    ours = builders.build(atj(), SETTINGS)
    other_job = builders.build(atj() | {"metadata": {"name": "other", "namespace": "team-a", "uid": "u2"}}, SETTINGS)
    foreign = [
        {"metadata": {"name": "allow-all"}, "spec": {"podSelector": {}}},
        {"metadata": {"name": "by-app"}, "spec": {"podSelector": {"matchLabels": {"app": "rl-agent"}}}},
        {"metadata": {"name": "elsewhere"}, "spec": {"podSelector": {"matchLabels": {"app": "web"}}}},
        {
            "metadata": {"name": "reopen-quarantined"},
            "spec": {"podSelector": {"matchExpressions": [{"key": names.QUARANTINED_LABEL, "operator": "Exists"}]}},
        },
    ]
    found = network.foreign_policies(
        [*ours.network_policies, *other_job.network_policies, *foreign], "rome-lockdown", ours.pod_labels
    )
    assert found == ["allow-all", "by-app", "reopen-quarantined"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda b: b["spec"]["policy"]["network"].update(listenPorts=[9400]), "port 9400 is the sensor's"),
        (
            lambda b: b["spec"]["template"]["spec"]["containers"][0].update(securityContext={"runAsUser": 65532}),
            "the sensor's own uid",
        ),
        (
            lambda b: (
                b["spec"]["template"].setdefault("metadata", {}).update(labels={"trainguard.io/quarantined": "x"})
            ),
            "trainguard.io/quarantined is trainguard's own",
        ),
        (lambda b: b["spec"].update(replicas=0), "spec.replicas"),
    ],
)
def test_a_spec_that_cannot_be_built_says_what_to_change(change: Any, expected: str) -> None:
    body = atj()
    change(body)
    with pytest.raises(builders.UnbuildableSpec, match=expected):
        builders.build(body, SETTINGS)


def test_building_does_not_change_its_input() -> None:
    body = atj()
    before = copy.deepcopy(body)
    builders.build(body, SETTINGS)
    assert body == before
