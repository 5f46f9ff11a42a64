"""The ValidatingAdmissionPolicy and its binding: the API server itself refuses a guarded pod that lacks or alters
the sensor, escapes to the host, or gains privileges, and any change to trainguard's own labels, annotations and
pod conditions by anyone but the operator. In-process CEL: no webhook that can be down, failurePolicy Fail.

What "guarded" means: the pod, before or after the request, has the label trainguard.io/job. Every other pod is
untouched (matchConditions), and only namespaces the binding selects are affected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from trainguard.api import v1alpha1
from trainguard.builders import names
from trainguard.builders.settings import SensorSettings

POLICY_NAME = "trainguard-guarded-pods"
BINDING_NAME = "trainguard-guarded-pods"


def _quote(values: Sequence[str]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def _labelled(obj: str) -> str:
    return f"{obj} != null && has({obj}.metadata.labels) && '{names.JOB_LABEL}' in {obj}.metadata.labels"


def _prefixed_map(obj: str, field: str) -> str:
    """The trainguard.io/ entries of obj.metadata.<field> as 'key=value' strings."""
    m = f"{obj}.metadata.{field}"
    return f"(has({m}) ? {m}.filter(k, k.startsWith('{names.PREFIX}')).map(k, k + '=' + {m}[k]) : [])"


def _prefixed_conditions(obj: str) -> str:
    c = f"{obj}.status.conditions"
    return (
        f"(has({obj}.status) && has({c}) ? "
        f"{c}.filter(x, x.type.startsWith('{names.PREFIX}')).map(x, x.type + '=' + x.status) : [])"
    )


def _same_set(a: str, b: str) -> str:
    return f"{a}.all(x, x in {b}) && {b}.all(x, x in {a})"


def _rule(expression: str, message: str, reason: str = "Forbidden") -> dict[str, Any]:
    return {"expression": expression, "message": message, "reason": reason}


def validating_admission_policy(sensor: SensorSettings, operator_usernames: Sequence[str]) -> dict[str, Any]:
    """The policy. `operator_usernames`: who may change trainguard.io/ labels, annotations and pod conditions
    (the operator's ServiceAccount, `system:serviceaccount:<namespace>:<name>`)."""
    create = "request.operation == 'CREATE'"
    not_status = "variables.notStatus"
    safe = _quote(v1alpha1.SAFE_CAPABILITIES)
    sensor_caps = _quote(names.SENSOR_CAPABILITIES)
    sc = "c.securityContext"
    key_suffix = names.sensor_key_secret_name("")
    adds = (
        f"variables.containers.all(c, c.name == '{names.SENSOR_CONTAINER}'"
        " || !has(c.securityContext) || !has(c.securityContext.capabilities)"
        " || !has(c.securityContext.capabilities.add)"
        f" || c.securityContext.capabilities.add.all(x, x in {safe} || x in variables.keep))"
    )
    validations = [
        _rule(
            f"!({create}) || size(variables.sensors) == 1",
            f"a pod labelled {names.JOB_LABEL} must run the {names.SENSOR_CONTAINER} native sidecar: create it"
            " through its AgentTrainingJob, or remove the label",
        ),
        _rule(
            f"!({create}) || variables.sensors.all(c, has(c.restartPolicy) && c.restartPolicy == 'Always')",
            f"the {names.SENSOR_CONTAINER} container must be a native sidecar: an init container with"
            " restartPolicy: Always",
        ),
        _rule(
            f"!({not_status}) || variables.sensors.all(c, c.image == '{sensor.image}')",
            f"the {names.SENSOR_CONTAINER} container must run image {sensor.image}: do not change its image",
        ),
        _rule(
            f"!({create}) || variables.sensors.all(c, has({sc}) && has({sc}.capabilities)"
            f" && has({sc}.capabilities.drop) && 'ALL' in {sc}.capabilities.drop"
            f" && (!has({sc}.capabilities.add) || {sc}.capabilities.add.all(x, x in {sensor_caps}))"
            f" && has({sc}.allowPrivilegeEscalation) && !{sc}.allowPrivilegeEscalation"
            f" && has({sc}.readOnlyRootFilesystem) && {sc}.readOnlyRootFilesystem"
            f" && (!has({sc}.privileged) || !{sc}.privileged))",
            f"the {names.SENSOR_CONTAINER} container must drop ALL capabilities and add only "
            + ", ".join(names.SENSOR_CAPABILITIES)
            + ", with allowPrivilegeEscalation: false and a read-only root filesystem",
        ),
        _rule(
            f"!({not_status}) || variables.containers.all(c, c.name == '{names.SENSOR_CONTAINER}'"
            f" || !has(c.volumeMounts) || c.volumeMounts.all(m, m.name != '{names.SENSOR_KEY_VOLUME}'))",
            f"only the {names.SENSOR_CONTAINER} container may mount the {names.SENSOR_KEY_VOLUME} volume (the"
            " job's sensor key): remove the volumeMount",
        ),
        _rule(
            f"!({create}) || !has(object.spec.volumes) || object.spec.volumes.all(v,"
            f" v.name == '{names.SENSOR_KEY_VOLUME}'"
            " ? (has(v.secret) && has(v.secret.secretName) && v.secret.secretName == variables.keySecret)"
            f" : !((has(v.secret) && has(v.secret.secretName) && v.secret.secretName.endsWith('{key_suffix}'))"
            " || (has(v.projected) && has(v.projected.sources) && v.projected.sources.exists(x, has(x.secret)"
            f" && has(x.secret.name) && x.secret.name.endsWith('{key_suffix}')))))",
            f"a sensor key Secret (*{key_suffix}) may only be the {names.SENSOR_KEY_VOLUME} volume, and that volume"
            f" only the job's own <job>{key_suffix}: the workload may never read the key",
        ),
        _rule(
            f"!({not_status}) || variables.containers.all(c, c.name == '{names.SENSOR_CONTAINER}' || ("
            "(!has(c.env) || c.env.all(e, !has(e.valueFrom) || !has(e.valueFrom.secretKeyRef)"
            f" || !has(e.valueFrom.secretKeyRef.name) || !e.valueFrom.secretKeyRef.name.endsWith('{key_suffix}')))"
            " && (!has(c.envFrom) || c.envFrom.all(f, !has(f.secretRef) || !has(f.secretRef.name)"
            f" || !f.secretRef.name.endsWith('{key_suffix}')))))",
            f"a container's environment may not come from a sensor key Secret (*{key_suffix})",
        ),
        _rule(
            f"!({create}) || variables.containers.all(c, c.name == '{names.SENSOR_CONTAINER}'"
            f" || !has(c.securityContext) || !has(c.securityContext.runAsUser)"
            f" || c.securityContext.runAsUser != {sensor.uid})",
            f"uid {sensor.uid} is the sensor's: run the workload's containers as another user",
        ),
        _rule(
            f"!({create}) || !((has(object.spec.hostNetwork) && object.spec.hostNetwork)"
            " || (has(object.spec.hostPID) && object.spec.hostPID)"
            " || (has(object.spec.hostIPC) && object.spec.hostIPC))",
            "hostNetwork, hostPID and hostIPC must be false: they take the pod outside the sensor and its"
            " NetworkPolicies",
        ),
        _rule(
            f"!({not_status}) || variables.containers.all(c, !has(c.securityContext)"
            " || !has(c.securityContext.privileged) || !c.securityContext.privileged)",
            "no container may be privileged (containers, initContainers, sidecars and ephemeralContainers):"
            " remove securityContext.privileged",
        ),
        _rule(
            f"!({not_status}) || {adds}",
            "securityContext.capabilities.add may only name "
            + ", ".join(v1alpha1.SAFE_CAPABILITIES)
            + " (NET_RAW and NET_ADMIN only when the job's policy.workload.keepCapabilities keeps them)",
        ),
        _rule(
            f"!({create}) || !has(object.spec.volumes) || object.spec.volumes.all(v, !has(v.hostPath))",
            "hostPath volumes are not allowed: use a persistentVolumeClaim, emptyDir or configMap",
        ),
        _rule(
            f"!({create}) || variables.tokenAllowed || !has(object.spec.volumes) || object.spec.volumes.all(v,"
            " !has(v.projected) || !has(v.projected.sources)"
            " || v.projected.sources.all(s, !has(s.serviceAccountToken)))",
            "a ServiceAccount token is mounted but the job's policy does not allow one: set"
            " automountServiceAccountToken: false (or policy.workload.mountServiceAccountToken: true)",
        ),
        _rule(
            "request.operation != 'UPDATE' || variables.isOperator || ("
            + _same_set(_prefixed_map("object", "labels"), _prefixed_map("oldObject", "labels"))
            + " && "
            + _same_set(_prefixed_map("object", "annotations"), _prefixed_map("oldObject", "annotations"))
            + ")",
            f"only the trainguard operator may change {names.PREFIX}* labels and annotations of a guarded pod",
        ),
        _rule(
            "request.operation != 'UPDATE' || variables.isOperator || "
            + _same_set(_prefixed_conditions("object"), _prefixed_conditions("oldObject")),
            f"only the trainguard operator may change {names.PREFIX}* conditions of a guarded pod",
        ),
    ]
    init = "(has(object.spec.initContainers) ? object.spec.initContainers : [])"
    ephemeral = "(has(object.spec.ephemeralContainers) ? object.spec.ephemeralContainers : [])"
    annotations = "object.metadata.annotations"
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": POLICY_NAME, "labels": {names.MANAGED_BY_LABEL: names.MANAGED_BY}},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["pods", "pods/status", "pods/ephemeralcontainers"],
                    }
                ]
            },
            "matchConditions": [
                {"name": "guarded-pod", "expression": f"({_labelled('object')}) || ({_labelled('oldObject')})"}
            ],
            "variables": [
                {"name": "notStatus", "expression": "!has(request.subResource) || request.subResource != 'status'"},
                {"name": "containers", "expression": f"object.spec.containers + {init} + {ephemeral}"},
                {"name": "sensors", "expression": f"{init}.filter(c, c.name == '{names.SENSOR_CONTAINER}')"},
                {
                    "name": "keySecret",
                    "expression": f"has(object.metadata.labels) && '{names.JOB_LABEL}' in object.metadata.labels"
                    f" ? object.metadata.labels['{names.JOB_LABEL}'] + '{key_suffix}' : ''",
                },
                {"name": "isOperator", "expression": f"request.userInfo.username in {_quote(operator_usernames)}"},
                {
                    "name": "keep",
                    "expression": f"has({annotations}) && '{names.KEEP_CAPABILITIES_ANNOTATION}' in {annotations}"
                    f" ? {annotations}['{names.KEEP_CAPABILITIES_ANNOTATION}'].split(',') : []",
                },
                {
                    "name": "tokenAllowed",
                    "expression": f"has({annotations}) && '{names.TOKEN_ALLOWED_ANNOTATION}' in {annotations}"
                    f" && {annotations}['{names.TOKEN_ALLOWED_ANNOTATION}'] == 'true'",
                },
            ],
            "validations": validations,
        },
    }


def validating_admission_policy_binding(namespaces: Sequence[str] | None) -> dict[str, Any]:
    """The binding, by namespace: the given ones, or every namespace when None (an operator watching all)."""
    selector: Mapping[str, Any] = (
        {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": sorted(namespaces)}]}
        if namespaces
        else {}
    )
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": BINDING_NAME, "labels": {names.MANAGED_BY_LABEL: names.MANAGED_BY}},
        "spec": {
            "policyName": POLICY_NAME,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": dict(selector)},
        },
    }
