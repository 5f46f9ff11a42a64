"""The NetworkPolicies of a job, built so that one label revokes everything.

NetworkPolicies are additive: a separate "isolate" policy cannot take back what another allows. So a default deny
selects all of the job's pods, and every allow selects only the job's pods *without* `trainguard.io/quarantined`.
Setting that label on a pod leaves it under the default deny alone, in both directions.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from trainguard.api import v1alpha1
from trainguard.builders import names
from trainguard.builders.settings import BuildSettings
from trainguard.builders.workload import child_metadata

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def job_pods(name: str) -> dict[str, Any]:
    """Every pod of the job, quarantined or not."""
    return {"matchLabels": {names.JOB_LABEL: name}}


def healthy_job_pods(name: str) -> dict[str, Any]:
    """The job's pods that are not quarantined: what every allow selects."""
    return {
        "matchLabels": {names.JOB_LABEL: name},
        "matchExpressions": [{"key": names.QUARANTINED_LABEL, "operator": "DoesNotExist"}],
    }


def _selector(selector: v1alpha1.LabelSelector) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if selector.match_labels:
        out["matchLabels"] = dict(selector.match_labels)
    if selector.match_expressions:
        out["matchExpressions"] = [
            {"key": r.key, "operator": r.operator, **({"values": list(r.values)} if r.values else {})}
            for r in selector.match_expressions
        ]
    return out


def _ports(ports: Iterable[v1alpha1.PortSpec]) -> list[dict[str, Any]]:
    out = []
    for p in ports:
        entry: dict[str, Any] = {"protocol": p.protocol, "port": p.port}
        if p.end_port is not None and p.end_port != p.port:
            entry["endPort"] = p.end_port
        out.append(entry)
    return out


def _network(text: str) -> str:
    return str(ipaddress.ip_network(text, strict=False))


def egress_peer(rule: v1alpha1.EgressRule) -> dict[str, Any]:
    if rule.cidr is not None:
        block: dict[str, Any] = {"cidr": _network(rule.cidr)}
        if rule.except_:
            block["except"] = [_network(e) for e in rule.except_]
        return {"ipBlock": block}
    peer: dict[str, Any] = {}
    if rule.namespace_selector is not None:
        peer["namespaceSelector"] = _selector(rule.namespace_selector)
    if rule.pod_selector is not None:
        peer["podSelector"] = _selector(rule.pod_selector)
    return peer


def _policy(atj: dict[str, Any], part: str, spec: dict[str, Any]) -> dict[str, Any]:
    name = atj["metadata"]["name"]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": child_metadata(atj, names.network_policy_name(name, part), "networkpolicy"),
        "spec": spec,
    }


def network_policies(
    atj: dict[str, Any], job: v1alpha1.AgentTrainingJob, settings: BuildSettings
) -> list[dict[str, Any]]:
    """The default deny first, then each allow; names `<job>-<part>`. Every field the API server would default
    is written out, so that what comes back from the server compares equal to what was built."""
    name = atj["metadata"]["name"]
    net = job.spec.policy.network
    out = [_policy(atj, "default-deny", {"podSelector": job_pods(name), "policyTypes": ["Ingress", "Egress"]})]
    if net.allow_dns:
        dns_peer = {
            "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: settings.dns_namespace}},
            "podSelector": {"matchLabels": dict(settings.dns_pod_labels)},
        }
        dns_ports = [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
        out.append(
            _policy(
                atj,
                "dns",
                {
                    "podSelector": healthy_job_pods(name),
                    "policyTypes": ["Egress"],
                    "egress": [{"to": [dns_peer], "ports": dns_ports}],
                },
            )
        )
    if net.allow_intra_job:
        peer = {"podSelector": healthy_job_pods(name)}
        out.append(
            _policy(
                atj,
                "intra-job",
                {
                    "podSelector": healthy_job_pods(name),
                    "policyTypes": ["Ingress", "Egress"],
                    "ingress": [{"from": [peer]}],
                    "egress": [{"to": [peer]}],
                },
            )
        )
    if net.egress:
        rules = []
        for rule in net.egress:
            entry: dict[str, Any] = {"to": [egress_peer(rule)]}
            if rule.ports:
                entry["ports"] = _ports(rule.ports)
            rules.append(entry)
        out.append(
            _policy(atj, "egress", {"podSelector": healthy_job_pods(name), "policyTypes": ["Egress"], "egress": rules})
        )
    if net.listen_ports:
        ports = [{"protocol": proto, "port": p} for p in net.listen_ports for proto in ("TCP", "UDP")]
        out.append(
            _policy(
                atj,
                "listen",
                {"podSelector": healthy_job_pods(name), "policyTypes": ["Ingress"], "ingress": [{"ports": ports}]},
            )
        )
    sensor_from = {"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: settings.operator_namespace}}}
    out.append(
        _policy(
            atj,
            "sensor",
            {
                # Every pod, quarantined ones included: the operator must still reach a quarantined pod's sensor
                # to cut what is open (POST /v2/cut) and to keep watching it (issue 13).
                "podSelector": job_pods(name),
                "policyTypes": ["Ingress"],
                "ingress": [{"from": [sensor_from], "ports": [{"protocol": "TCP", "port": settings.sensor.port}]}],
            },
        )
    )
    return out


# --- foreign policies ------------------------------------------------------------------------


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Whether a metav1.LabelSelector (as a dict, camelCase or snake_case keys) selects these labels."""
    if selector is None:
        return True
    match_labels = selector.get("matchLabels", selector.get("match_labels")) or {}
    if any(labels.get(k) != v for k, v in match_labels.items()):
        return False
    for req in selector.get("matchExpressions", selector.get("match_expressions")) or []:
        key, op, values = req["key"], req["operator"], req.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def foreign_policies(policies: Iterable[Mapping[str, Any]], job_name: str, pod_labels: Mapping[str, str]) -> list[str]:
    """Names of NetworkPolicies not built for this job that select its pods, quarantined or not: any of them
    could allow what trainguard denies, or reopen a quarantined pod."""
    healthy = {**pod_labels, names.JOB_LABEL: job_name}
    quarantined = {**healthy, names.QUARANTINED_LABEL: "true"}
    out = []
    for policy in policies:
        meta = policy.get("metadata") or {}
        labels = meta.get("labels") or {}
        if labels.get(names.JOB_LABEL) == job_name and labels.get(names.MANAGED_BY_LABEL) == names.MANAGED_BY:
            continue
        spec = policy.get("spec") or {}
        selector = spec.get("podSelector", spec.get("pod_selector"))
        if selector_matches(selector or {}, healthy) or selector_matches(selector or {}, quarantined):
            out.append(str(meta.get("name")))
    return sorted(out)
