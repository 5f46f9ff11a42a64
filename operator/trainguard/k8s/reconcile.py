"""The reconcile of one AgentTrainingJob, a recipe: read it, build its children with the pure builders, apply them
server-side (field manager `trainguard`), compute the status from what the API server then says, and patch the
status only when it changed. Also: the clean-up behind the finalizer, and installing the admission policy."""

from __future__ import annotations

import datetime as dt
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Protocol

from trainguard import builders
from trainguard.builders import names, network, status
from trainguard.k8s.client import Api, ApiError
from trainguard.k8s.metrics import OperatorMetrics

log = logging.getLogger("trainguard.operator")

Outcome = Literal["reconciled", "invalid", "error", "gone"]

#: API errors that mean "the request is wrong" (the spec must change), as opposed to "try again".
REFUSED = frozenset({400, 403, 409, 422})
MAX_LABEL_VALUE = 63


def utcnow() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Refused(Exception):
    """The API server refused a child: the message is its own, prefixed with the child."""

    def __init__(self, problem: status.Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


def _job_log(namespace: str, name: str) -> dict[str, Any]:
    return {"extra": {"job": f"{namespace}/{name}"}}


class ForeignPolicies:
    """NetworkPolicies not made by trainguard, per namespace, as the watch reports them: a reconcile checks them
    without listing every NetworkPolicy of the namespace (thousands, with many jobs)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_namespace: dict[str, dict[str, dict[str, Any]]] = {}

    def seen(self, policy: Mapping[str, Any], deleted: bool) -> None:
        meta = policy.get("metadata") or {}
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        with self._lock:
            known = self._by_namespace.setdefault(namespace, {})
            if deleted:
                known.pop(name, None)
            else:
                known[name] = {
                    "metadata": {"name": name, "labels": dict(meta.get("labels") or {})},
                    "spec": {"podSelector": (policy.get("spec") or {}).get("podSelector") or {}},
                }

    def of(self, namespace: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._by_namespace.get(namespace, {}).values())


class Observer(Protocol):
    def sync(self, atj: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> None: ...

    def forget(self, namespace: str, name: str) -> None: ...

    def degraded(self, namespace: str, name: str) -> list[tuple[str, str]]: ...


class Reconciler:
    """Reconciles AgentTrainingJobs by key; safe to call from several threads for different keys."""

    def __init__(
        self,
        api: Api,
        settings: builders.BuildSettings,
        metrics: OperatorMetrics | None = None,
        clock: Callable[[], str] = utcnow,
        foreign: ForeignPolicies | None = None,
    ) -> None:
        self.api = api
        self.settings = settings
        self.foreign = foreign if foreign is not None else ForeignPolicies()
        self.metrics = metrics or OperatorMetrics()
        self.clock = clock
        self.instance = socket.gethostname()
        self._warned: dict[tuple[str, str], str] = {}
        #: Told of every job reconciled and its pods (the guard of issue 13), and of jobs gone.
        self.observer: Observer | None = None
        self._lock = threading.Lock()

    # --- the recipe ----------------------------------------------------------------------------

    def reconcile(self, namespace: str, name: str) -> Outcome:
        started = time.monotonic()
        try:
            outcome = self._reconcile(namespace, name)
        except ApiError as error:
            log.warning("reconcile failed, will retry: %s", error, **_job_log(namespace, name))
            outcome = "error"
        finally:
            self.metrics.reconcile_duration.observe(time.monotonic() - started)
        self.metrics.reconciles.labels(outcome).inc()
        return outcome

    def _reconcile(self, namespace: str, name: str) -> Outcome:
        atj = self.api.get("AgentTrainingJob", namespace, name)
        if atj is None or atj["metadata"].get("deletionTimestamp"):
            if self.observer is not None:
                self.observer.forget(namespace, name)
            return "gone"
        problem: status.Problem | None = None
        job: Mapping[str, Any] | None = None
        pod_labels: dict[str, str] = {names.JOB_LABEL: name}
        try:
            children = builders.build(atj, self.settings)
            pod_labels = children.pod_labels
            self._apply(children.service_account)
            self._apply_network_policies(children.network_policies)
            job = self._apply_job(atj, children.job)
        except builders.UnbuildableSpec as error:
            problem = status.Problem("InvalidSpec", str(error))
        except Refused as refused:
            problem = refused.problem
        if job is None:
            existing = self.api.get("Job", namespace, names.job_name(name))
            job = existing if existing is not None and _owned_by(existing, atj) else None
        pods = self._pods(namespace, name)
        if problem is None and len(name) <= MAX_LABEL_VALUE:
            ours = self.api.list("NetworkPolicy", namespace, f"{names.JOB_LABEL}={name}")
            self._delete_stale_policies(name, ours, children.network_policies)
        foreign = network.foreign_policies(self.foreign.of(namespace), name, pod_labels)
        observed = status.Observed(
            generation=int(atj["metadata"].get("generation") or 0),
            job=job,
            pods=pods,
            foreign_policies=foreign,
            problem=problem,
            guard_problems=[
                status.Problem(reason, message)
                for reason, message in (self.observer.degraded(namespace, name) if self.observer is not None else [])
            ],
        )
        current = atj.get("status") or {}
        new = status.compute(current, observed, bool(atj["spec"].get("suspend")), self.clock())
        if not status.same(current, new):
            # With the resourceVersion read: the enforcer writes violations into the same status meanwhile, and a
            # merge patch of a stale copy would take them away (409: the reconcile is retried).
            self.api.patch(
                "AgentTrainingJob",
                namespace,
                name,
                {"metadata": {"resourceVersion": atj["metadata"]["resourceVersion"]}, "status": new},
                subresource="status",
            )
        if self.observer is not None and problem is None:
            self.observer.sync(atj, pods)
        self._warn(atj, problem, foreign)
        if problem is not None:
            log.info("not reconciled: %s: %s", problem.reason, problem.message, **_job_log(namespace, name))
            return "invalid"
        return "reconciled"

    def _pods(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """The job's pods; none can exist when its name is too long to be a label value."""
        if len(name) > MAX_LABEL_VALUE:
            return []
        return self.api.list("Pod", namespace, f"{names.JOB_LABEL}={name}")

    def _apply(self, body: Mapping[str, Any]) -> dict[str, Any]:
        try:
            return self.api.apply(body)
        except ApiError as error:
            if error.status in REFUSED or _typed_patch_refused(error):
                kind, child = body["kind"], body["metadata"]["name"]
                raise Refused(status.Problem(f"{kind}Refused", f"{kind} {child}: {error.message}")) from None
            raise

    def _apply_network_policies(self, desired: Sequence[Mapping[str, Any]]) -> None:
        """Apply each; one that comes back different from what was built (a field another manager added, which
        apply does not take away) is replaced whole."""
        for body in desired:
            applied = self._apply(body)
            if applied.get("spec") != body["spec"]:
                log.info(
                    "NetworkPolicy %s drifted; replacing it",
                    body["metadata"]["name"],
                    **_job_log(body["metadata"]["namespace"], body["metadata"]["labels"][names.JOB_LABEL]),
                )
                replacement = {**body, "metadata": {**body["metadata"], **_version(applied)}}
                self.api.replace(replacement)

    def _delete_stale_policies(
        self, name: str, policies: Sequence[Mapping[str, Any]], desired: Sequence[Mapping[str, Any]]
    ) -> None:
        wanted = {p["metadata"]["name"] for p in desired}
        for p in policies:
            labels = p["metadata"].get("labels") or {}
            if (
                labels.get(names.JOB_LABEL) == name
                and labels.get(names.MANAGED_BY_LABEL) == names.MANAGED_BY
                and p["metadata"]["name"] not in wanted
            ):
                self.api.delete("NetworkPolicy", p["metadata"]["namespace"], p["metadata"]["name"])

    def _apply_job(self, atj: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any] | None:
        """Create or update the Job. Its pod template is immutable: a Job built from another hash is deleted
        (foreground, so that old and new pods never run side by side) and made again on the next reconcile."""
        meta = desired["metadata"]
        existing = self.api.get("Job", meta["namespace"], meta["name"])
        if existing is not None:
            if not _owned_by(existing, atj):
                raise Refused(
                    status.Problem(
                        "NameTaken",
                        f"Job {meta['name']} exists and does not belong to this AgentTrainingJob:"
                        " rename the AgentTrainingJob or delete that Job",
                    )
                )
            if existing["metadata"].get("deletionTimestamp"):
                return None
            have = (existing["metadata"].get("annotations") or {}).get(names.POLICY_HASH_ANNOTATION)
            if have != meta["annotations"][names.POLICY_HASH_ANNOTATION]:
                log.info(
                    "pod template changed; replacing Job %s", meta["name"], **_job_log(meta["namespace"], meta["name"])
                )
                self.api.delete("Job", meta["namespace"], meta["name"], propagation="Foreground")
                return None
        return self._apply(desired)

    # --- Events ----------------------------------------------------------------------------------

    def _warn(self, atj: Mapping[str, Any], problem: status.Problem | None, foreign: Sequence[str]) -> None:
        """A Warning Event when a problem (or the set of foreign policies) first appears or changes."""
        key = (atj["metadata"]["namespace"], atj["metadata"]["name"])
        said = ""
        if problem is not None:
            said = f"{problem.reason}\n{problem.message}"
        elif foreign:
            said = "ForeignNetworkPolicy\nNetworkPolicies not made by trainguard select this job's pods: " + ", ".join(
                foreign
            )
        with self._lock:
            before = self._warned.get(key, "")
            self._warned[key] = said
        if said and said != before:
            reason, message = said.split("\n", 1)
            self.event(atj, "Warning", reason, message)

    def event(self, atj: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        meta = atj["metadata"]
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": atj.get("apiVersion", "trainguard.io/v1alpha1"),
                "kind": atj.get("kind", "AgentTrainingJob"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "type": kind,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "trainguard"},
            "reportingComponent": "trainguard.io/operator",
            "reportingInstance": self.instance,
            "firstTimestamp": now[:19] + "Z",
            "lastTimestamp": now[:19] + "Z",
            "count": 1,
        }
        try:
            self.api.create("Event", meta["namespace"], body)
        except ApiError as error:
            log.warning("could not post Event %s: %s", reason, error, **_job_log(meta["namespace"], meta["name"]))

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._warned.pop((namespace, name), None)

    # --- deletion --------------------------------------------------------------------------------

    def clean_up(
        self,
        atj: Mapping[str, Any],
        attempts: int = 5,
        backoff_s: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> bool:
        """Remove what owner references do not: the quarantine label and condition on pods of the job that
        outlive it. Bounded: after `attempts` failures it posts a Warning Event and gives up (False), so that
        the finalizer never holds the deletion forever."""
        namespace, name = atj["metadata"]["namespace"], atj["metadata"]["name"]
        last: ApiError | None = None
        for attempt in range(attempts):
            try:
                for pod in self._pods(namespace, name):
                    self._release(pod)
                self.forget(namespace, name)
                return True
            except ApiError as error:
                last = error
                log.warning("clean-up attempt %d failed: %s", attempt + 1, error, **_job_log(namespace, name))
                sleep(backoff_s * 2**attempt)
        self.event(
            atj,
            "Warning",
            "CleanupFailed",
            f"could not remove quarantine labels and conditions from the job's pods after {attempts} attempts"
            f" ({last}); remove {names.QUARANTINED_LABEL} and the {names.QUARANTINED_CONDITION} condition by hand",
        )
        self.forget(namespace, name)
        return False

    def _release(self, pod: Mapping[str, Any]) -> None:
        meta = pod["metadata"]
        if names.QUARANTINED_LABEL in (meta.get("labels") or {}):
            self.api.patch(
                "Pod", meta["namespace"], meta["name"], {"metadata": {"labels": {names.QUARANTINED_LABEL: None}}}
            )
        conditions = (pod.get("status") or {}).get("conditions") or []
        for index in reversed(range(len(conditions))):
            if conditions[index].get("type") == names.QUARANTINED_CONDITION:
                self.api.patch(
                    "Pod",
                    meta["namespace"],
                    meta["name"],
                    [
                        {
                            "op": "test",
                            "path": f"/status/conditions/{index}/type",
                            "value": names.QUARANTINED_CONDITION,
                        },
                        {"op": "remove", "path": f"/status/conditions/{index}"},
                    ],
                    subresource="status",
                    content_type="application/json-patch+json",
                )

    # --- the admission policy ------------------------------------------------------------------

    def install_admission_policy(self, namespaces: Sequence[str] | None, usernames: Sequence[str]) -> None:
        """Apply the ValidatingAdmissionPolicy and its binding (cluster-scoped; needs the RBAC to do so)."""
        self.api.apply(builders.admission.validating_admission_policy(self.settings.sensor, usernames))
        self.api.apply(builders.admission.validating_admission_policy_binding(namespaces))


def _typed_patch_refused(error: ApiError) -> bool:
    """Server-side apply answers a field the schema does not know (a typo in the template) with a 500 whose
    message names the field; it is the spec that must change, not a server fault."""
    return error.status == 500 and "failed to create typed patch object" in error.message


def _owned_by(obj: Mapping[str, Any], atj: Mapping[str, Any]) -> bool:
    uid = atj["metadata"].get("uid")
    return any(ref.get("uid") == uid and ref.get("controller") for ref in obj["metadata"].get("ownerReferences") or [])


def _version(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {"resourceVersion": obj["metadata"]["resourceVersion"]}
