"""RBAC is enforced: a ServiceAccount's token works, and it may do only what a Role grants it."""

from __future__ import annotations

from collections.abc import Callable

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.integration.conftest import Cluster
from tests.polling import wait_for


def _status(call: Callable[[], object]) -> int:
    """HTTP status of an API call: 200 when it succeeds, the error's status otherwise."""
    try:
        call()
    except ApiException as error:
        return int(error.status)
    return 200


def test_service_account_needs_a_role(control_plane: Cluster, namespace: str) -> None:
    control_plane.core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    token = control_plane.core.create_namespaced_service_account_token(
        "reader", namespace, {"spec": {"expirationSeconds": 600}}
    ).status.token
    api = control_plane.client_for_token(token)
    core = client.CoreV1Api(api)

    review = client.AuthenticationV1Api(api).create_self_subject_review({})
    assert review.status.user_info.username == f"system:serviceaccount:{namespace}:reader"

    assert _status(lambda: core.list_namespaced_pod(namespace)) == 403

    control_plane.rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}],
        },
    )
    control_plane.rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "reader-reads-pods"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    )
    wait_for(lambda: _status(lambda: core.list_namespaced_pod(namespace)) == 200, 30, "the Role grants nothing")

    assert _status(lambda: core.list_namespaced_secret(namespace)) == 403
    assert _status(lambda: core.list_namespaced_pod("default")) == 403
    assert _status(lambda: core.delete_collection_namespaced_pod(namespace)) == 403


def test_bad_token_is_unauthorized(control_plane: Cluster) -> None:
    core = client.CoreV1Api(control_plane.client_for_token("not-a-token"))
    assert _status(core.list_namespace) == 401
