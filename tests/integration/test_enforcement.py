"""Enforcement (issue 13) on KWOK nodes: the whole ladder, with each pod's sensor played by the replaying sensor
(tests/sensorplay.py, the real protocol) bound to the pod's own 127.x address, and the operator as `trainguard run`
in its own process. Crash safety: the operator is killed between steps (TRAINGUARD_FAILPOINT) and started again."""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.integration.conftest import KwokCluster
from tests.integration.faulty_proxy import faulty_proxy
from tests.integration.running_operator import ATJ, RunningOperator, run_operator
from tests.polling import wait_for
from tests.sensorplay import TUNNEL_REMOTE, Player
from trainguard.builders import sensorkey

pytestmark = pytest.mark.integration

JOB_LABEL = "trainguard.io/job"
QUARANTINED = "trainguard.io/quarantined"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Rig:
    """The operator, the played sensors and the job under test."""

    def __init__(self, cluster: KwokCluster, namespace: str, tmp_path: Path, interval_s: float = 1.0) -> None:
        self.cluster, self.namespace, self.tmp_path = cluster, namespace, tmp_path
        self.port = _free_port()
        self.master = secrets.token_hex(32).encode()  # the file holds text; whitespace around it is ignored
        self.master_file = tmp_path / "master.key"
        self.master_file.write_bytes(self.master)
        self.player = Player(port=self.port, interval_s=interval_s)
        self.name = "train"

    def operator_args(self) -> list[str]:
        return [
            f"--sensor-port={self.port}",
            f"--sensor-master-key-file={self.master_file}",
            "--dns-ip=10.96.0.10",
            "--cut-timeout=2",
        ]

    @contextlib.contextmanager
    def operator(self, log_name: str = "a", kubeconfig: Path | None = None) -> Iterator[RunningOperator]:
        path = self.tmp_path / log_name
        path.mkdir(exist_ok=True)
        with run_operator(self.cluster, self.namespace, path, *self.operator_args(), kubeconfig=kubeconfig) as running:
            yield running

    def body(self, action: str, replicas: int, dry_run: bool, enforcement: dict[str, Any]) -> dict[str, Any]:
        """The AgentTrainingJob under test."""
        return {
            "apiVersion": "trainguard.io/v1alpha1",
            "kind": "AgentTrainingJob",
            "metadata": {"name": self.name},
            "spec": {
                "replicas": replicas,
                "template": {
                    "spec": {"containers": [{"name": "trainer", "image": "trainer:dev", "command": ["python"]}]}
                },
                "policy": {"enforcement": {"action": action, "dryRun": dry_run, **enforcement}},
            },
        }

    def create(self, action: str, replicas: int = 2, dry_run: bool = False, **enforcement: Any) -> dict[str, Any]:
        body = self.body(action, replicas, dry_run, enforcement)
        out: dict[str, Any] = self.cluster.custom.create_namespaced_custom_object(
            *ATJ[:2], self.namespace, ATJ[2], body
        )
        return out

    def atj(self) -> dict[str, Any]:
        out: dict[str, Any] = self.cluster.custom.get_namespaced_custom_object(
            *ATJ[:2], self.namespace, ATJ[2], self.name
        )
        return out

    def pods(self) -> list[client.V1Pod]:
        items: list[client.V1Pod] = self.cluster.core.list_namespaced_pod(
            self.namespace, label_selector=f"{JOB_LABEL}={self.name}"
        ).items
        return items

    def play(self, count: int) -> list[str]:
        """Wait for `count` running pods with IPs; play each one's sensor. Returns namespace/name of each."""

        def running() -> list[client.V1Pod] | None:
            found = [p for p in self.pods() if p.status.phase == "Running" and p.status.pod_ip]
            return found if len(found) == count else None

        pods = wait_for(running, 60, f"{count} pods of {self.name} Running")
        key = sensorkey.job_key(self.master, self.atj()["metadata"]["uid"])
        out = []
        for p in sorted(pods, key=lambda p: p.metadata.name):
            pod = f"{self.namespace}/{p.metadata.name}"
            if pod not in self.player.pods:
                self.player.add(pod, p.status.pod_ip, key)
            out.append(pod)
        return out

    def pod(self, pod: str) -> client.V1Pod | None:
        try:
            found: client.V1Pod = self.cluster.core.read_namespaced_pod(pod.split("/")[1], self.namespace)
        except client.ApiException as error:
            if error.status == 404:
                return None
            raise
        return found

    def cut_mark(self, pod: str) -> str:
        """The pod's `trainguard.io/cut` annotation ("confirmed <nonce> pids=..."), empty when none or no pod."""
        p = self.pod(pod)
        return str((p.metadata.annotations or {}).get("trainguard.io/cut", "")) if p is not None else ""

    def events(self, name: str) -> list[client.CoreV1Event]:
        found: list[client.CoreV1Event] = self.cluster.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={name}"
        ).items
        return [e for e in found if (e.source and e.source.component == "trainguard") and e.type == "Warning"]

    def streaming(self, count: int) -> None:
        wait_for(lambda: self.player.streams >= count, 30, f"the operator did not open {count} sensor streams")


@pytest.fixture
def rig(kwok_cluster: KwokCluster, kwok_namespace: str, tmp_path: Path) -> Iterator[Rig]:
    r = Rig(kwok_cluster, kwok_namespace, tmp_path)
    try:
        yield r
    finally:
        r.player.stop()


def _violations(rig: Rig, rule: str | None = None) -> list[dict[str, Any]]:
    return [v for v in (rig.atj().get("status") or {}).get("violations") or [] if rule is None or v["rule"] == rule]


def _metric(running: RunningOperator, name: str, **labels: str) -> float:
    total = 0.0
    for line in running.metrics().splitlines():
        if line.startswith((name + "{", name + " ")) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.split()[-1])
    return total


def _no_duplicates(rig: Rig, pod: str) -> None:
    """The pod's violations are in status, each (rule, action) once, and each Event about them was posted once."""
    name = pod.split("/")[1]
    records = [(v["rule"], v["action"]) for v in _violations(rig) if v["pod"] == name]
    assert records, "no violation recorded for the pod"
    assert len(records) == len(set(records)), f"a violation was recorded twice: {records}"
    said = [(e.reason, e.message) for e in rig.events(name)]
    assert len(said) == len(set(said)), f"an Event was posted twice: {said}"
    assert len(said) <= len(records), f"more Events than violations: {said}"


def test_alert_records_and_posts_events_and_changes_nothing(rig: Rig) -> None:
    rig.create("Alert")
    with rig.operator() as running:
        bad, good = rig.play(2)
        rig.streaming(2)
        rig.player.set_mode(bad, "tunnel")
        wait_for(lambda: _violations(rig, "net.tunnel"), 20, "no net.tunnel violation in status")
        record = _violations(rig, "net.tunnel")[0]
        assert record["pod"] == bad.split("/")[1] and record["action"] == "Alert" and not record["dryRun"]
        assert "process=ssh" in record["evidence"]
        remote = f"{TUNNEL_REMOTE[0]}:{TUNNEL_REMOTE[1]}"
        wait_for(
            lambda: any(remote in v["evidence"] for v in _violations(rig, "net.egress.undeclared")),
            20,
            "the undeclared egress to the tunnel's remote was not recorded",
        )
        wait_for(lambda: rig.events(bad.split("/")[1]) and rig.events(rig.name), 20, "Events on pod and job")
        wait_for(
            lambda: _metric(running, "trainguard_violations_total", rule="net.tunnel", severity="Critical") >= 1,
            10,
            "violation metric",
        )
        assert _metric(running, "trainguard_enforcement_actions_total", action="Alert", outcome="applied") >= 1
        assert _metric(running, "trainguard_detection_to_enforcement_seconds_count") >= 1
        assert _metric(running, "trainguard_sensor_streams", state="streaming") == 2
        assert _metric(running, "trainguard_monitored_pods") == 2
        for pod in (bad, good):
            p = rig.pod(pod)
            assert p is not None and QUARANTINED not in (p.metadata.labels or {})
        assert not rig.player.cuts
        violating = next(c for c in rig.atj()["status"]["conditions"] if c["type"] == "Violating")
        assert violating["status"] == "True"
        # The key's Secret: owned by the job, the key the sensors were played with, unreadable by the workload.
        secret = rig.cluster.core.read_namespaced_secret("train-sensor-key", rig.namespace)
        [owner] = secret.metadata.owner_references
        assert owner.kind == "AgentTrainingJob" and owner.uid == rig.atj()["metadata"]["uid"]
        key = sensorkey.job_key(rig.master, rig.atj()["metadata"]["uid"])
        assert base64.b64decode(secret.data["sensor.key"]) == key
        review = client.AuthorizationV1Api(rig.cluster.api).create_subject_access_review(
            {
                "spec": {
                    "user": f"system:serviceaccount:{rig.namespace}:train-workload",
                    "groups": ["system:serviceaccounts", f"system:serviceaccounts:{rig.namespace}"],
                    "resourceAttributes": {
                        "namespace": rig.namespace,
                        "verb": "get",
                        "resource": "secrets",
                        "name": "train-sensor-key",
                    },
                }
            }
        )
        assert review.status.allowed is False, "the workload's ServiceAccount can read the sensor key"


def test_quarantine_labels_cuts_and_keeps_the_pod_and_its_neighbour(rig: Rig) -> None:
    rig.create("Quarantine")
    with rig.operator() as running:
        bad, good = rig.play(2)
        rig.streaming(2)
        rig.player.set_mode(bad, "tunnel")

        wait_for(lambda: rig.cut_mark(bad).startswith("confirmed"), 20, "the cut was not confirmed on the pod")
        p = rig.pod(bad)
        assert p is not None
        assert p.metadata.labels[QUARANTINED] == "true"
        evidence = json.loads(p.metadata.annotations["trainguard.io/evidence"])
        assert evidence["action"] == "Quarantine"
        assert evidence["evidence"]["process"] == "ssh" and evidence["evidence"]["pid"] == 31
        assert evidence["remotes"] == [f"{TUNNEL_REMOTE[0]}:{TUNNEL_REMOTE[1]}"]
        [command] = rig.player.cuts[bad]
        assert command.pids == [31] and command.signal == "STOP"
        assert not any(k.cidr.startswith(TUNNEL_REMOTE[0]) for k in command.keep)
        assert any(k.cidr == "10.96.0.10/32" and k.ports == [53] for k in command.keep)
        neighbour = rig.pod(good)
        assert neighbour is not None and QUARANTINED not in (neighbour.metadata.labels or {})
        assert good not in rig.player.cuts
        wait_for(lambda: bad.split("/")[1] in rig.atj()["status"].get("quarantinedPods", []), 20, "quarantinedPods")
        assert _metric(running, "trainguard_enforcement_actions_total", action="Quarantine", outcome="applied") == 1
        wait_for(
            lambda: _metric(running, "trainguard_quarantined_pods", namespace=rig.namespace) == 1,
            20,
            "trainguard_quarantined_pods",
        )
        # The pod is kept (forensics): still Running, never deleted.
        assert rig.pod(bad) is not None and rig.pod(bad).status.phase == "Running"  # type: ignore[union-attr]


def test_a_second_tunnel_on_a_quarantined_pod_gets_a_cut_of_its_own_once(rig: Rig) -> None:
    """Two ssh -R of one pod (pids 31 and 32): the first decision quarantines and cuts (stopping 31); the second
    tunnel's process is a violation of its own and gets a cut of its own that stops 32. Neither is cut twice, not
    even by an operator started again while both stopped processes are still listed."""
    rig.create("Quarantine")
    with rig.operator() as first:
        bad, good = rig.play(2)
        rig.streaming(2)
        rig.player.set_mode(bad, "two-tunnels")

        def both_stopped() -> str | None:
            mark = rig.cut_mark(bad)
            return mark if mark.startswith("confirmed") and mark.endswith("pids=31,32") else None

        wait_for(both_stopped, 30, f"both tunnels' processes were not stopped: cuts {rig.player.cuts[bad]}")
        assert sorted(c.pids[0] for c in rig.player.cuts[bad]) == [31, 32], rig.player.cuts[bad]
        assert all(len(c.pids) == 1 for c in rig.player.cuts[bad])
        pod = rig.pod(bad)
        assert pod is not None and pod.metadata.labels[QUARANTINED] == "true" and pod.status.phase == "Running"

        def recorded(pid: int) -> bool:
            return any(v["pod"] == bad.split("/")[1] and f"pid={pid} " in v["evidence"] + " " for v in _violations(rig))

        wait_for(lambda: recorded(31) and recorded(32), 20, f"both tunnels' violations in status: {_violations(rig)}")
        first.process.kill()  # killed, not stopped: the job and its pods stay for the next operator
        first.process.wait()
    seq = rig.player.pods[bad].seq
    with rig.operator("second"):
        rig.streaming(2)
        # Ten more samples of both stopped processes reach the restarted operator: nothing is cut again.
        wait_for(lambda: rig.player.pods[bad].seq >= seq + 10, 30, "the restarted operator read no samples")
        assert len(rig.player.cuts[bad]) == 2, rig.player.cuts[bad]
        assert good not in rig.player.cuts
        _no_duplicates(rig, bad)


def test_quarantine_whose_cut_is_not_confirmed_escalates_to_delete(rig: Rig) -> None:
    rig.create("Quarantine")
    with rig.operator() as running:
        bad, _good = rig.play(2)
        rig.streaming(2)
        rig.player.pods[bad].cut_reply = "remaining"
        rig.player.set_mode(bad, "tunnel")
        wait_for(lambda: rig.pod(bad) is None, 30, "the pod whose cut was unconfirmed was not deleted")
        assert _metric(running, "trainguard_enforcement_actions_total", action="Quarantine", outcome="unconfirmed") == 1
        job = wait_for(
            lambda: (j := rig.cluster.batch.read_namespaced_job(rig.name, rig.namespace)).status.failed_indexes and j,
            30,
            "the index was not failed",
        )
        assert job.status.failed_indexes in {"0", "1"}
        assert len(rig.pods()) == 1, "the Job started a replacement for the deleted pod"


def test_delete_sets_the_condition_and_the_job_does_not_replace_the_pod(rig: Rig) -> None:
    rig.create("Delete")
    with rig.operator() as running:
        bad, good = rig.play(2)
        rig.streaming(2)
        rig.player.set_mode(bad, "tunnel")
        wait_for(lambda: rig.pod(bad) is None, 30, "the pod was not deleted")
        wait_for(
            lambda: rig.cluster.batch.read_namespaced_job(rig.name, rig.namespace).status.failed_indexes,
            30,
            "the podFailurePolicy did not fail the index",
        )
        assert [f"{rig.namespace}/{p.metadata.name}" for p in rig.pods()] == [good]
        assert _metric(running, "trainguard_enforcement_actions_total", action="Delete", outcome="applied") == 1


def test_suspend_quarantines_every_pod_then_suspends(rig: Rig) -> None:
    rig.create("Suspend")
    with rig.operator():
        bad, good = rig.play(2)
        rig.streaming(2)
        rig.player.set_mode(bad, "tunnel")
        wait_for(lambda: rig.atj()["spec"].get("suspend") is True, 30, "spec.suspend was not set")
        assert rig.player.cuts[bad] and rig.player.cuts[good], "a pod was not cut before the suspend"
        wait_for(lambda: rig.atj()["status"].get("phase") == "Suspended", 30, "phase Suspended")


def test_dry_run_records_and_changes_nothing(rig: Rig) -> None:
    rig.create("Delete", dry_run=True)
    with rig.operator() as running:
        bad, _good = rig.play(2)
        rig.streaming(2)
        rig.player.set_mode(bad, "tunnel")
        wait_for(lambda: _violations(rig, "net.tunnel"), 20, "no record in status")
        assert all(v["dryRun"] for v in _violations(rig))
        wait_for(lambda: any(e.reason == "DryRunDelete" for e in rig.events(rig.name)), 20, "DryRun Event")
        assert _metric(running, "trainguard_enforcement_actions_total", action="Delete", outcome="dry-run") >= 1
        p = rig.pod(bad)
        assert p is not None and QUARANTINED not in (p.metadata.labels or {})
        assert not rig.player.cuts
        assert not rig.atj()["spec"].get("suspend")


def test_a_forged_stream_is_sensor_identity(rig: Rig) -> None:
    rig.create("Alert")
    with rig.operator():
        bad, _ = rig.play(2)
        rig.streaming(2)
        rig.player.set_mode(bad, "forged")
        wait_for(lambda: _violations(rig, "sensor.identity"), 20, "forged lines were not sensor.identity")


def test_engine_state_is_checkpointed_in_status(rig: Rig) -> None:
    rig.create("Alert")
    with rig.operator():
        bad, _ = rig.play(2)
        rig.streaming(2)
        rig.player.set_mode(bad, "tunnel")
        wait_for(
            lambda: any(
                t["rule"] == "net.tunnel" and t["standing"]
                for t in ((rig.atj()["status"].get("detection") or {}).get("pods", {}).get(bad, {}).get("tracks", []))
            ),
            30,
            "the standing violation is not in status.detection",
        )


def _crash_at(rig: Rig, monkeypatch: pytest.MonkeyPatch, action: str, failpoint: str) -> tuple[str, str]:
    """A job with `action`, two played pods, one turning into a tunnel, and an operator that dies at `failpoint`:
    the (bad, good) pods, for a second operator to finish the work."""
    rig.create(action)
    monkeypatch.setenv("TRAINGUARD_FAILPOINT", failpoint)
    with rig.operator("first") as first:
        bad, good = rig.play(2)
        rig.streaming(2)
        rig.player.set_mode(bad, "tunnel")
        wait_for(lambda: not first.alive(), 30, f"the operator did not stop at {failpoint}")
    monkeypatch.delenv("TRAINGUARD_FAILPOINT")
    return bad, good


@pytest.mark.parametrize("failpoint", ["record.after-status", "quarantine.after-label", "quarantine.after-cut"])
def test_quarantine_survives_a_crash_between_steps(rig: Rig, monkeypatch: pytest.MonkeyPatch, failpoint: str) -> None:
    bad, good = _crash_at(rig, monkeypatch, "Quarantine", failpoint)
    with rig.operator("second"):
        confirmed = lambda: rig.cut_mark(bad).startswith("confirmed")  # noqa: E731
        wait_for(confirmed, 30, "the quarantine was not finished after the restart")
        assert len(rig.player.cuts[bad]) <= 2  # one, or a second after a crash right after the first cut
        assert failpoint != "record.after-status" or len(rig.player.cuts[bad]) == 1
        _no_duplicates(rig, bad)
        assert good not in rig.player.cuts


@pytest.mark.parametrize("failpoint", ["delete.after-record", "delete.after-condition"])
def test_delete_survives_a_crash_between_steps(rig: Rig, monkeypatch: pytest.MonkeyPatch, failpoint: str) -> None:
    bad, good = _crash_at(rig, monkeypatch, "Delete", failpoint)
    with rig.operator("second"):
        wait_for(lambda: rig.pod(bad) is None, 30, "the pod was not deleted after the restart")
        wait_for(
            lambda: rig.cluster.batch.read_namespaced_job(rig.name, rig.namespace).status.failed_indexes,
            30,
            "the index was not failed",
        )
        assert [f"{rig.namespace}/{p.metadata.name}" for p in rig.pods()] == [good]
        _no_duplicates(rig, bad)


def test_api_faults_lose_and_double_no_decision(rig: Rig) -> None:
    """30 % of the operator's writes answered 500, 429 (Retry-After), 409, 503, reset or stalled 3 s, every watch
    dropped after 5 s: two pods turn malicious; each is quarantined and cut once, nothing is recorded twice."""
    rig.create("Quarantine", replicas=3)
    with faulty_proxy(rig.cluster.kubeconfig, rig.tmp_path) as (proxy, kubeconfig):
        proxy.enabled = False  # let the job start cleanly; faults from the first violation on
        with rig.operator(kubeconfig=kubeconfig):
            first, second, good = rig.play(3)
            rig.streaming(3)
            proxy.enabled = True
            rig.player.set_mode(first, "tunnel")
            rig.player.set_mode(second, "tunnel")

            def cut(pod: str) -> bool:
                return rig.cut_mark(pod).startswith("confirmed")

            wait_for(lambda: cut(first) and cut(second), 60, f"not both cut; faults so far: {proxy.injected}")
            wait_for(
                lambda: (
                    {first.split("/")[1], second.split("/")[1]} <= set(rig.atj()["status"].get("quarantinedPods", []))
                ),
                60,
                "quarantinedPods",
            )
            proxy.enabled = False
            assert sum(proxy.injected.values()) >= 5, f"too few faults to prove anything: {proxy.injected}"
            for pod in (first, second):
                assert len(rig.player.cuts[pod]) == 1, f"{pod} cut {len(rig.player.cuts[pod])} times"
                _no_duplicates(rig, pod)
            neighbour = rig.pod(good)
            assert neighbour is not None and QUARANTINED not in (neighbour.metadata.labels or {})
