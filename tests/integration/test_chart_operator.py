"""The operator with only the chart's ServiceAccount token (issue 15, Deliver 4): the chart is installed with
`operator.replicas=0` on a control plane of its own that writes an audit log for that ServiceAccount alone; the
operator runs as a local process with the Deployment's own arguments and a kubeconfig that holds nothing but a
TokenRequest token for the ServiceAccount, and drives an AgentTrainingJob on KWOK nodes (sensors played on the pods'
127.x addresses) from start to quarantine, and on to Delete for a pod whose cut is not confirmed, then through drift
repair, a stale policy and a replaced Job. Both RBAC modes: cluster-wide and `operator.watchNamespaces`. Every call
the chart's RBAC forbids fails the test, named from the audit log; every permission the chart grants that the run
never used is printed, and fails the test unless UNREACHED says why this run cannot use it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests import helm as chart
from tests.integration import controlplane, kwok
from tests.integration.conftest import KwokCluster, _build, _clients, _stop_plane
from tests.integration.running_operator import ATJ, RunningOperator, free_port, started
from tests.polling import wait_for
from tests.sensorplay import TUNNEL_REMOTE, Player
from trainguard.builders import sensorkey

pytestmark = pytest.mark.integration

RELEASE = "trainguard"  # named like the chart, so every object (and the ServiceAccount) is "trainguard"
OPERATOR_NS = "trainguard-system"
SA = "trainguard"
USER = f"system:serviceaccount:{OPERATOR_NS}:{SA}"
JOB = "train"
DNS_IP = "10.0.0.10"  # the kube-dns Service's ClusterIP, inside the plane's service range 10.0.0.0/24
QUARANTINED = "trainguard.io/quarantined"

#: Grants of the chart this run cannot use, each with the path that uses it. A grant that the run never uses and
#: that is not here fails the test (a new grant must be exercised or explained); one that is here but was used
#: fails it too (the list must stay true).
UNREACHED: dict[tuple[str, str, str], str] = {}


@dataclass(frozen=True)
class Grant:
    """One verb on one resource (with its subresource) that a rule of the chart grants; `namespace` None for a
    ClusterRole (every namespace and cluster-scoped objects), `names` the rule's resourceNames (empty: any)."""

    verb: str
    group: str
    resource: str
    namespace: str | None
    names: tuple[str, ...] = ()

    def __str__(self) -> str:
        where = "cluster-wide" if self.namespace is None else f"in {self.namespace}"
        named = f" {list(self.names)}" if self.names else ""
        return f"{self.verb} {self.group or 'core'}/{self.resource}{named} {where}"


@dataclass(frozen=True)
class Call:
    """One request of the operator, from its audit event."""

    verb: str
    group: str
    resource: str  # "pods" or "pods/status"
    namespace: str | None
    name: str | None
    code: int

    def __str__(self) -> str:
        where = "cluster-wide" if self.namespace is None else f"in {self.namespace}"
        return f"{self.verb} {self.group or 'core'}/{self.resource}{f' {self.name}' if self.name else ''} {where}"

    def uses(self, grant: Grant) -> bool:
        # Server-side apply that creates its object is a PATCH the API server authorizes as create too (201).
        verbs = {self.verb, "create"} if self.verb == "patch" and self.code == 201 else {self.verb}
        return (
            grant.verb in verbs
            and (grant.group, grant.resource) == (self.group, self.resource)
            and (grant.namespace is None or grant.namespace == self.namespace)
            and (not grant.names or self.name in grant.names)
        )


def audit_policy(user: str) -> dict[str, Any]:
    """Metadata of every request of `user` and nothing else (the log stays a few hundred lines)."""
    return {
        "apiVersion": "audit.k8s.io/v1",
        "kind": "Policy",
        "omitStages": ["RequestReceived"],
        "rules": [{"level": "Metadata", "users": [user]}, {"level": "None"}],
    }


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KwokCluster, Path]]:
    """A control plane of its own (the chart here watches every namespace and binds an admission policy to all of
    them), auditing USER's requests, with two KWOK nodes; and the path of its audit log."""
    if "error" in _build:
        pytest.fail(f"the control plane could not be built: {_build['error']}", pytrace=False)
    base = tmp_path_factory.mktemp("audited")
    policy = base / "audit-policy.yaml"
    policy.write_text(yaml.safe_dump(audit_policy(USER)))
    try:
        plane = controlplane.ControlPlane.start(
            controlplane.binary(), base / "data", extra_args=("--audit-policy", str(policy))
        )
    except controlplane.ControlPlaneError as error:
        pytest.fail(str(error), pytrace=False)
    player: kwok.Kwok | None = None
    try:
        try:
            player = kwok.Kwok.start(plane.kubeconfig, base / "kwok.log")
        except kwok.KwokError as error:
            pytest.fail(str(error), pytrace=False)
        cluster = KwokCluster(**_clients(plane), kwok=player)
        cluster.nodes = kwok.add_nodes(cluster.core, ["kwok-0", "kwok-1"], player)
        yield cluster, plane.data_dir / "logs" / "audit.log"
    finally:
        if player is not None:
            player.stop()
        _stop_plane(plane)


def token_kubeconfig(cluster: KwokCluster, path: Path) -> Path:
    """A kubeconfig with the API server, its CA and a TokenRequest token for the chart's ServiceAccount: no other
    credential."""
    token = cluster.core.create_namespaced_service_account_token(
        SA, OPERATOR_NS, {"spec": {"expirationSeconds": 3600}}
    ).status.token
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    ca = admin["clusters"][0]["cluster"]["certificate-authority-data"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "plane", "cluster": {"server": cluster.plane.server, "certificate-authority-data": ca}}],
        "users": [{"name": SA, "user": {"token": token}}],
        "contexts": [{"name": SA, "context": {"cluster": "plane", "user": SA}}],
        "current-context": SA,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def operator_command(container: dict[str, Any], kubeconfig: Path, master_file: Path, metrics_port: int) -> list[str]:
    """`trainguard run` with the chart's Deployment's arguments; only where it listens and where its files are
    differ (loopback, a free port, no kopf /healthz, the chart's master key copied to a local file)."""
    local = {
        "--metrics-port": str(metrics_port),
        "--health-port": "0",
        "--sensor-master-key-file": str(master_file),
    }
    assert container["args"][0] == "run", container["args"]
    args = []
    for arg in container["args"][1:]:
        flag = arg.split("=", 1)[0]
        args.append(f"{flag}={local.pop(flag)}" if flag in local else arg)
    assert not local, f"the chart's Deployment no longer passes {sorted(local)}"
    return [
        sys.executable, "-m", "trainguard", "run", *args,
        f"--kubeconfig={kubeconfig}", "--metrics-address=127.0.0.1",
    ]


@contextlib.contextmanager
def operator(command: list[str], log_path: Path, port: int) -> Iterator[RunningOperator]:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG" and not k.startswith("KUBERNETES_")}
    # The Deployment's fieldRef environment, as the kubelet would fill it in.
    env |= {"POD_NAMESPACE": OPERATOR_NS, "POD_NAME": "trainguard-local", "SERVICE_ACCOUNT": SA}
    with started(command, log_path, port, env) as running:
        yield running


def granted(manifests: list[dict[str, Any]]) -> set[Grant]:
    """Every (verb, resource, scope) the rendered ClusterRoles and Roles give the ServiceAccount through their
    bindings."""
    subject = {"kind": "ServiceAccount", "name": SA, "namespace": OPERATOR_NS}
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d for d in manifests}
    out: set[Grant] = set()
    for binding in manifests:
        if binding["kind"] not in {"ClusterRoleBinding", "RoleBinding"} or subject not in binding["subjects"]:
            continue
        namespace = binding["metadata"]["namespace"] if binding["kind"] == "RoleBinding" else None
        ref = binding["roleRef"]
        role = roles[(ref["kind"], None if ref["kind"] == "ClusterRole" else namespace, ref["name"])]
        for rule in role["rules"]:
            names = tuple(rule.get("resourceNames") or ())
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    out |= {Grant(v, group, resource, namespace, names) for v in rule["verbs"]}
    return out


def audited_calls(log: Path, offset: int = 0) -> list[Call]:
    """The operator's resource requests logged past `offset`, one per audit ID (a watch logs ResponseStarted, then
    ResponseComplete)."""
    events: dict[str, dict[str, Any]] = {}
    with log.open("rb") as f:
        f.seek(offset)
        text = f.read().decode()
    for line in text.splitlines():
        event = json.loads(line)
        assert event["user"]["username"] == USER, f"the audit policy let another user through: {event['user']}"
        events.setdefault(event["auditID"], event)
    calls = []
    for event in events.values():
        ref = event.get("objectRef")
        if ref is None:  # discovery (/api, /apis, /version): every authenticated user may
            assert event["responseStatus"]["code"] < 400, f"non-resource request refused: {event['requestURI']}"
            continue
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        code = int(event.get("responseStatus", {}).get("code", 0))
        group, namespace, name = ref.get("apiGroup", ""), ref.get("namespace"), ref.get("name")
        calls.append(Call(event["verb"], group, resource, namespace, name, code))
    return calls


def atj_body(ns: str) -> dict[str, Any]:
    return {
        "apiVersion": "trainguard.io/v1alpha1",
        "kind": "AgentTrainingJob",
        "metadata": {"name": JOB},
        "spec": {
            "replicas": 2,
            "template": {"spec": {"containers": [{"name": "trainer", "image": "trainer:dev", "command": ["python"]}]}},
            "policy": {
                "network": {
                    "allowDNS": True,
                    # A selector rule: the operator resolves it to pod IPs, listing namespaces and their pods.
                    "egress": [
                        {
                            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                            "podSelector": {"matchLabels": {"app": "store"}},
                            "ports": [{"port": 8443, "protocol": "TCP"}],
                        }
                    ],
                },
                "enforcement": {"action": "Quarantine"},
            },
        },
    }


@pytest.fixture(scope="module")
def resolver(audited: tuple[KwokCluster, Path]) -> str:
    """The cluster resolver's Service, which the operator reads through the chart's one grant in kube-system."""
    cluster, _ = audited
    cluster.core.create_namespaced_service(
        "kube-system",
        {
            "metadata": {"name": "kube-dns", "labels": {"k8s-app": "kube-dns"}},
            "spec": {"clusterIP": DNS_IP, "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]},
        },
    )
    return DNS_IP


@pytest.mark.parametrize("watch", ["every-namespace", "watch-namespaces"])
def test_the_operator_with_only_the_charts_token_quarantines_and_uses_what_the_chart_grants(
    audited: tuple[KwokCluster, Path], resolver: str, tmp_path: Path, watch: str
) -> None:
    cluster, audit_log = audited
    ns = f"agents-{watch}"
    cluster.core.create_namespace({"metadata": {"name": ns}})  # before the install: a Role goes there
    sensor_port = free_port()  # other test runs on this machine may play sensors on the same 127.x pod addresses
    values = {"operator.replicas": "0", "sensor.port": str(sensor_port)}
    if watch == "watch-namespaces":
        values["operator.watchNamespaces"] = f"{{{ns}}}"
    # --take-ownership: the CRD (kept on uninstall) of the previous case's release.
    chart.helm(
        "install", RELEASE, str(chart.CHART), "--namespace", OPERATOR_NS, "--create-namespace", "--take-ownership",
        *chart.set_args(values), env=cluster.env(),
    )
    offset = audit_log.stat().st_size if audit_log.exists() else 0  # the previous case's calls are not this one's
    try:
        docs, log = _run(cluster, ns, tmp_path)
    except AssertionError as error:
        # A missing end state is most often a refused call: name it.
        raise AssertionError(f"{error}\n{forbidden_by_the_chart(audited_calls(audit_log, offset))}") from error
    finally:
        chart.helm("uninstall", RELEASE, "--namespace", OPERATOR_NS, "--wait", env=cluster.env())
    calls = audited_calls(audit_log, offset)

    assert any(c.verb == "watch" and c.resource == "agenttrainingjobs" for c in calls), "no watch of the operator's"
    assert not any(c.code == 403 for c in calls), forbidden_by_the_chart(calls)
    refusals = [m for m in messages(log) if re.search(r"\b403\b|forbidden", m, re.IGNORECASE)]
    assert not refusals, "the operator's log shows a refusal:\n" + "\n".join(refusals[:10])

    grants = granted(docs)
    used = {g: [c for c in calls if c.uses(g)] for g in grants}
    ungranted = sorted({str(c) for c in calls if not any(c.uses(g) for g in grants)})
    print(f"\n{watch}: {len(calls)} calls of {USER} in the audit log; the chart's grants:")
    for grant in sorted(grants, key=str):
        scopes = Counter("cluster-wide" if c.namespace is None else "namespaced" for c in used[grant])
        print(f"  {'used  ' if used[grant] else 'UNUSED'} {grant}  {dict(scopes) or ''}")
    for call in ungranted:
        print(f"  allowed by the cluster's default roles, not the chart's: {call}")
    unused = {(g.verb, g.group, g.resource) for g in grants if not used[g]}
    for key in sorted(unused & UNREACHED.keys()):
        print(f"  unused, not reachable here: {key}: {UNREACHED[key]}")
    surplus = sorted(str(g) for g in grants if not used[g] and (g.verb, g.group, g.resource) not in UNREACHED)
    assert not surplus, f"the chart grants what the operator never used (use it, or say why in UNREACHED): {surplus}"
    stale = sorted(UNREACHED.keys() - unused)
    assert not stale, f"UNREACHED lists grants this run used: {stale}"


def forbidden_by_the_chart(calls: list[Call]) -> str:
    refused = sorted({str(c) for c in calls if c.code == 403})
    return "the chart's RBAC forbade the operator:\n  " + "\n  ".join(refused) if refused else "no call was refused"


def _run(cluster: KwokCluster, ns: str, tmp_path: Path) -> tuple[list[dict[str, Any]], str]:
    """Run the operator as the installed chart's Deployment would and drive a job in `ns`; return the release's
    manifests and the operator's log."""
    manifest = chart.helm("get", "manifest", RELEASE, "-n", OPERATOR_NS, env=cluster.env()).stdout
    docs = [d for d in yaml.safe_load_all(manifest) if d]
    (deployment,) = chart.by_kind(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 0
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    sensor_port = int(next(a for a in container["args"] if a.startswith("--sensor-port=")).split("=")[1])
    master_file = tmp_path / "master.key"
    master_file.write_bytes(master_key(cluster))
    wait_for(lambda: _established(cluster), 30, "the chart's CRD is not Established")
    wait_for(
        lambda: any(sa.metadata.name == "default" for sa in cluster.core.list_namespaced_service_account(ns).items),
        30,
        f"no default ServiceAccount in {ns}",
    )
    kubeconfig = token_kubeconfig(cluster, tmp_path / "kubeconfig")
    port = free_port()
    command = operator_command(container, kubeconfig, master_file, port)
    player = Player(port=sensor_port)
    try:
        with operator(command, tmp_path / "operator.log", port) as running:
            _drive_to_quarantine(cluster, player, ns)
            _reach_the_rarer_paths(cluster, ns)
            cluster.custom.delete_namespaced_custom_object(*ATJ[:2], ns, ATJ[2], JOB)
            wait_for(
                lambda: not cluster.custom.list_namespaced_custom_object(*ATJ[:2], ns, ATJ[2])["items"],
                30,
                "the operator did not release the AgentTrainingJob's finalizer",
            )
            assert running.alive(), running.log_path.read_text()[-3000:]
    finally:
        player.stop()
    log = (tmp_path / "operator.log").read_text()
    assert messages(log), f"the operator logged nothing as JSON:\n{log[-2000:]}"
    return docs, log


def _established(cluster: KwokCluster) -> bool:
    crd = cluster.extensions.read_custom_resource_definition("agenttrainingjobs.trainguard.io")
    return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])


def _drive_to_quarantine(cluster: KwokCluster, player: Player, ns: str) -> None:
    """The job runs, pod A's sensor sees a reverse tunnel and its cut is confirmed (Quarantine), pod B's does too
    but its cut is not (escalation to Delete)."""
    core = cluster.core
    cluster.custom.create_namespaced_custom_object(*ATJ[:2], ns, ATJ[2], atj_body(ns))

    def running() -> list[client.V1Pod] | None:
        pods = core.list_namespaced_pod(ns, label_selector=f"trainguard.io/job={JOB}").items
        up = [p for p in pods if p.status.phase == "Running" and p.status.pod_ip]
        return sorted(up, key=lambda p: p.metadata.name) if len(up) == 2 else None

    pod_a, pod_b = wait_for(running, 60, f"2 pods of {JOB} Running (the chart's admission policy admits them)")
    uid = cluster.custom.get_namespaced_custom_object(*ATJ[:2], ns, ATJ[2], JOB)["metadata"]["uid"]
    key = sensorkey.job_key(master_key(cluster), uid)
    a, b = (f"{ns}/{p.metadata.name}" for p in (pod_a, pod_b))
    for name, pod in ((a, pod_a), (b, pod_b)):
        player.add(name, pod.status.pod_ip, key)
    wait_for(lambda: player.streams >= 2, 30, "the operator did not open both sensor streams")

    # What the reconcile made with the token: the Job, the key Secret, the workload's ServiceAccount, the policies.
    assert cluster.batch.read_namespaced_job(JOB, ns)
    assert cluster.core.read_namespaced_secret(f"{JOB}-sensor-key", ns).data["sensor.key"]
    assert cluster.core.read_namespaced_service_account(f"{JOB}-workload", ns)
    policies = client.NetworkingV1Api(cluster.api).list_namespaced_network_policy(
        ns, label_selector=f"trainguard.io/job={JOB}"
    ).items
    assert policies, "no NetworkPolicy made for the job"

    player.set_mode(a, "tunnel")

    def cut_confirmed() -> client.V1Pod | None:
        p = core.read_namespaced_pod(pod_a.metadata.name, ns)
        return p if (p.metadata.annotations or {}).get("trainguard.io/cut", "").startswith("confirmed") else None

    quarantined = wait_for(cut_confirmed, 30, "pod A's cut was not confirmed")
    assert quarantined.metadata.labels[QUARANTINED] == "true"
    assert json.loads(quarantined.metadata.annotations["trainguard.io/evidence"])["action"] == "Quarantine"
    [command] = player.cuts[a]
    assert any(k.cidr == f"{DNS_IP}/32" and k.ports == [53] for k in command.keep), (
        f"the cut did not keep the resolver read from kube-system/kube-dns: {command.keep}"
    )
    assert not any(k.cidr.startswith(TUNNEL_REMOTE[0]) for k in command.keep)

    player.pods[b].cut_reply = "remaining"
    player.set_mode(b, "tunnel")

    def gone() -> bool:
        try:
            core.read_namespaced_pod(pod_b.metadata.name, ns)
        except client.ApiException as error:
            return error.status == 404
        return False

    wait_for(gone, 30, "pod B, whose cut was not confirmed, was not deleted")
    wait_for(
        lambda: cluster.batch.read_namespaced_job(JOB, ns).status.failed_indexes,
        30,
        "the Job's podFailurePolicy did not fail pod B's index",
    )

    def status() -> dict[str, Any] | None:
        st = cluster.custom.get_namespaced_custom_object(*ATJ[:2], ns, ATJ[2], JOB).get("status") or {}
        return st if pod_a.metadata.name in (st.get("quarantinedPods") or []) else None

    st = wait_for(status, 30, "status.quarantinedPods does not name pod A")
    records = {(v["pod"], v["action"]) for v in st["violations"]}
    assert (pod_a.metadata.name, "Quarantine") in records, st["violations"]
    assert any(c["type"] == "Violating" and c["status"] == "True" for c in st["conditions"])

    def warnings(name: str) -> list[str]:
        events = core.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}").items
        return [e.reason for e in events if e.source and e.source.component == "trainguard" and e.type == "Warning"]

    wait_for(lambda: warnings(pod_a.metadata.name) and warnings(JOB), 20, "Warning Events on pod A and the job")


def _reach_the_rarer_paths(cluster: KwokCluster, ns: str) -> None:
    """Drift by another field manager (the policy is replaced whole: update), a policy the job no longer asks for
    (deleted), and a changed pod template (the Job is deleted and made again)."""
    net = client.NetworkingV1Api(cluster.api)
    deny = f"{JOB}-default-deny"
    net.patch_namespaced_network_policy(deny, ns, {"spec": {"ingress": [{}]}})  # an allow-all inside the deny
    wait_for(lambda: not net.read_namespaced_network_policy(deny, ns).spec.ingress, 20, f"{deny} not restored")

    old = cluster.batch.read_namespaced_job(JOB, ns).metadata.uid
    change = {
        "spec": {
            "policy": {"network": {"allowIntraJob": False}},
            "template": {"spec": {"containers": [{"name": "trainer", "image": "trainer:2", "command": ["python"]}]}},
        }
    }
    cluster.custom.patch_namespaced_custom_object(*ATJ[:2], ns, ATJ[2], JOB, change)

    def intra_job_gone() -> bool:
        names = {p.metadata.name for p in net.list_namespaced_network_policy(ns).items}
        return f"{JOB}-default-deny" in names and f"{JOB}-intra-job" not in names

    wait_for(intra_job_gone, 20, "the intra-job policy the job no longer asks for was not deleted")

    def replaced() -> bool:
        try:
            job = cluster.batch.read_namespaced_job(JOB, ns)
        except client.ApiException as error:
            if error.status == 404:
                return False
            raise
        return bool(job.metadata.uid != old and job.spec.template.spec.containers[0].image == "trainer:2")

    wait_for(replaced, 60, "the Job was not made again with the new pod template")


def messages(log: str) -> list[str]:
    """The messages (and exceptions) of the operator's JSON log lines."""
    out = []
    for line in log.splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            out.append(f"{entry.get('message', '')} {entry.get('error', '')}".strip())
    return out


def master_key(cluster: KwokCluster) -> bytes:
    secret = cluster.core.read_namespaced_secret(f"{RELEASE}-sensor-master-key", OPERATOR_NS)
    return base64.b64decode(secret.data["master.key"])
