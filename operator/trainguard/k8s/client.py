"""One small JSON client over the Kubernetes Python client's transport: paths in, plain dicts out.

Plain dicts (the API server's own JSON, parsed once) rather than the generated model classes: the builders speak
dicts, server-side apply takes them as they are, and deserializing every list into model objects costs more than
the rest of a reconcile. Every request has a timeout: nothing here can hang forever.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from kubernetes import client, config

from trainguard.builders import names

#: (connect, read) seconds for one request.
REQUEST_TIMEOUT: tuple[float, float] = (5.0, 30.0)


class ApiError(Exception):
    """The API server answered with an error (or could not be reached: status 0)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Kind:
    """Where a kind lives in the API."""

    group_version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        base = "/api/v1" if self.group_version == "v1" else f"/apis/{self.group_version}"
        if self.namespaced and namespace is not None:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{name}"
        if subresource is not None:
            base += f"/{subresource}"
        return base


KINDS: dict[str, Kind] = {
    "ServiceAccount": Kind("v1", "serviceaccounts"),
    "Pod": Kind("v1", "pods"),
    "Secret": Kind("v1", "secrets"),
    "Service": Kind("v1", "services"),
    "Namespace": Kind("v1", "namespaces", False),
    "Event": Kind("v1", "events"),
    "NetworkPolicy": Kind("networking.k8s.io/v1", "networkpolicies"),
    "Job": Kind("batch/v1", "jobs"),
    "AgentTrainingJob": Kind("trainguard.io/v1alpha1", "agenttrainingjobs"),
    "ValidatingAdmissionPolicy": Kind("admissionregistration.k8s.io/v1", "validatingadmissionpolicies", False),
    "ValidatingAdmissionPolicyBinding": Kind(
        "admissionregistration.k8s.io/v1", "validatingadmissionpolicybindings", False
    ),
    "SelfSubjectReview": Kind("authentication.k8s.io/v1", "selfsubjectreviews", False),
}


class NoCluster(Exception):
    """No usable kubeconfig and no in-cluster account."""


def connect(kubeconfig: str | None = None) -> client.ApiClient:
    """A client from the kubeconfig file given, else $KUBECONFIG / ~/.kube/config, else the in-cluster account.
    NoCluster says which was tried when none works."""
    try:
        if kubeconfig:
            return cast(client.ApiClient, config.new_client_from_config(config_file=kubeconfig))  # type: ignore[no-untyped-call]
        try:
            return cast(client.ApiClient, config.new_client_from_config())  # type: ignore[no-untyped-call]
        except config.ConfigException as outside:
            cfg = client.Configuration()
            try:
                config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
            except config.ConfigException as inside:
                raise NoCluster(f"no kubeconfig ({outside}) and not in a cluster ({inside})") from None
            return client.ApiClient(cfg)
    except (OSError, config.ConfigException) as error:
        raise NoCluster(f"kubeconfig {kubeconfig}: {error}") from None


@dataclass(frozen=True)
class Credentials:
    """Where the API server is and how to authenticate: what kopf's login needs (the same as our client's)."""

    server: str
    ca_path: str | None
    insecure: bool
    scheme: str | None
    token: str | None
    certificate_path: str | None
    private_key_path: str | None


def credentials(api_client: client.ApiClient) -> Credentials:
    cfg = api_client.configuration
    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    return Credentials(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        scheme=scheme,
        token=token,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
    )


class Api:
    """JSON requests with the credentials of one ApiClient."""

    def __init__(self, api_client: client.ApiClient, timeout: tuple[float, float] = REQUEST_TIMEOUT) -> None:
        self.api_client = api_client
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        method_, url, headers, payload, _ = self.api_client.param_serialize(
            method=method,
            resource_path=path,
            query_params=list(query),
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self.api_client.call_api(method_, url, headers, payload, _request_timeout=self.timeout)
            response.read()  # type: ignore[no-untyped-call]
        except client.ApiException as error:  # the transport raises for non-2xx
            raise _error(error.status or 0, error.reason or "", error.body) from None
        except Exception as error:  # urllib3 connection errors and timeouts
            # A connection that timed out may be one of several a broken network froze: drop every pooled one, so
            # that the next request opens a fresh connection instead of waiting out each frozen one in turn.
            self.api_client.rest_client.pool_manager.clear()
            raise ApiError(0, type(error).__name__, str(error)) from None
        data = response.data or b"{}"
        if not 200 <= response.status < 300:
            raise _error(response.status, response.reason or "", data)
        out: dict[str, Any] = json.loads(data)
        return out

    # --- verbs ---------------------------------------------------------------------------------

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return self.request("GET", KINDS[kind].path(namespace, name))
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    def list(self, kind: str, namespace: str | None, label_selector: str | None = None) -> list[dict[str, Any]]:
        query = [("labelSelector", label_selector)] if label_selector else []
        items: list[dict[str, Any]] = self.request("GET", KINDS[kind].path(namespace), query).get("items") or []
        return items

    def apply(self, body: Mapping[str, Any], field_manager: str = names.FIELD_MANAGER) -> dict[str, Any]:
        """Server-side apply, forcing ownership of the fields in body, with strict field validation (a typo in
        the template is an error, not a silently dropped field)."""
        meta = body["metadata"]
        path = KINDS[body["kind"]].path(meta.get("namespace"), meta["name"])
        query = [("fieldManager", field_manager), ("force", "true"), ("fieldValidation", "Strict")]
        return self.request("PATCH", path, query, dict(body), "application/apply-patch+yaml")

    def replace(self, body: Mapping[str, Any]) -> dict[str, Any]:
        meta = body["metadata"]
        path = KINDS[body["kind"]].path(meta.get("namespace"), meta["name"])
        query = [("fieldManager", names.FIELD_MANAGER), ("fieldValidation", "Strict")]
        return self.request("PUT", path, query, dict(body))

    def patch(  # noqa: PLR0917
        self,
        kind: str,
        namespace: str | None,
        name: str,
        patch: Any,
        subresource: str | None = None,
        content_type: str = "application/merge-patch+json",
    ) -> dict[str, Any]:
        path = KINDS[kind].path(namespace, name, subresource)
        return self.request("PATCH", path, [("fieldManager", names.FIELD_MANAGER)], patch, content_type)

    def delete(self, kind: str, namespace: str | None, name: str, propagation: str = "Background") -> None:
        try:
            self.request("DELETE", KINDS[kind].path(namespace, name), body={"propagationPolicy": propagation})
        except ApiError as error:
            if error.status != 404:
                raise

    def create(self, kind: str, namespace: str | None, body: Mapping[str, Any]) -> dict[str, Any]:
        return self.request("POST", KINDS[kind].path(namespace), body=dict(body))

    def whoami(self) -> str:
        """The username these credentials authenticate as (SelfSubjectReview)."""
        review = self.create(
            "SelfSubjectReview", None, {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        )
        return str(((review.get("status") or {}).get("userInfo") or {}).get("username", ""))


def _error(status: int, reason: str, body: Any) -> ApiError:
    message = str(body or "")
    try:
        parsed = json.loads(body) if body else {}
        if isinstance(parsed, dict) and parsed.get("message"):
            message = str(parsed["message"])
            reason = str(parsed.get("reason") or reason)
    except (ValueError, TypeError):
        pass
    return ApiError(status, reason, message)
