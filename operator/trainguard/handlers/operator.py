"""The kopf wiring: which events lead to which reconcile. No logic here; handlers return nothing.

The handlers are coroutines that only touch the queue and the known jobs (no thread hop per watch event, and
those two are only changed on the event loop); the deletion handler's API calls run in a thread.

Every trigger only queues the job's key: the AgentTrainingJob's own create/update/resume, the periodic resync
(a kopf timer), and the watch events of its children (Job, pods, ServiceAccount, NetworkPolicies, a foreign
NetworkPolicy included) so that drift is reverted as soon as it is seen. The WorkQueue coalesces them and runs
the reconcile in worker threads: the event loop never waits for the API.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from trainguard.api import v1alpha1
from trainguard.builders import names
from trainguard.k8s.client import credentials
from trainguard.k8s.reconcile import Reconciler
from trainguard.k8s.workqueue import Key, WorkQueue


@dataclass(frozen=True)
class WatchSettings:
    """Watch-stream settings that cannot freeze silently (kopf issues #232, #585)."""

    server_timeout_s: float = 300.0
    """Asked of the API server per watch request (timeoutSeconds): it ends the stream, kopf reconnects."""
    client_timeout_s: float = 330.0
    """The whole watch request's limit on our side, in case the server never ends it."""
    connect_timeout_s: float = 10.0
    """Opening a watch connection."""
    inactivity_timeout_s: float = 70.0
    """No event, not even a bookmark (the API server sends one about every minute), for this long: the stream is
    taken for dead and reopened. kopf >= 1.44 asks for bookmarks on every watch."""
    request_timeout_s: float = 30.0
    """Every other request of kopf's (patches of its annotations, Events): 5 minutes by default in kopf."""


@dataclass
class Wiring:
    """What the handlers act on: the reconciler, the queue, and the jobs known per namespace."""

    reconciler: Reconciler
    queue: WorkQueue
    known: dict[str, set[str]] = field(default_factory=dict)

    def enqueue(self, namespace: str, name: str) -> None:
        self.known.setdefault(namespace, set()).add(name)
        self.reconciler.metrics.watched_jobs.set(sum(len(v) for v in self.known.values()))
        self.queue.add((namespace, name))
        self.reconciler.metrics.queue_depth.set(len(self.queue))

    def forget(self, namespace: str, name: str) -> None:
        self.known.get(namespace, set()).discard(name)
        self.reconciler.metrics.watched_jobs.set(sum(len(v) for v in self.known.values()))


#: Seconds before a reconcile that failed on the API (unreachable, timed out, 5xx) is tried again.
RETRY_AFTER_S = 2.0


def work(reconciler: Reconciler, queue: Callable[[], WorkQueue]) -> Callable[[Key], None]:
    def run(key: Key) -> None:
        if reconciler.reconcile(*key) == "error":
            queue().add_after(key, RETRY_AFTER_S)

    return run


def configure(settings: kopf.OperatorSettings, watch: WatchSettings, workers: int) -> None:
    """kopf's own state in trainguard.io/ annotations (the CRD's status schema is closed and would prune it)."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.PREFIX.rstrip("/"))
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=names.PREFIX.rstrip("/"), key="last-handled-configuration", ignored_fields=["status"]
    )
    settings.persistence.finalizer = names.FINALIZER
    settings.watching.server_timeout = int(watch.server_timeout_s)  # the API server wants an integer
    settings.watching.client_timeout = watch.client_timeout_s
    settings.watching.connect_timeout = watch.connect_timeout_s
    settings.watching.inactivity_timeout = watch.inactivity_timeout_s
    settings.networking.request_timeout = watch.request_timeout_s
    settings.networking.connect_timeout = watch.connect_timeout_s
    settings.posting.level = logging.WARNING  # kopf's own Events only for problems
    settings.execution.max_workers = max(4, workers)


def registry(wiring: Wiring, watch: WatchSettings, resync_s: float, workers: int) -> kopf.OperatorRegistry:
    reg = kopf.OperatorRegistry()
    g, v, p = v1alpha1.GROUP, v1alpha1.VERSION, v1alpha1.PLURAL
    guarded: dict[str, Any] = {names.JOB_LABEL: kopf.PRESENT}

    @kopf.on.login(registry=reg)
    def login(**_: Any) -> kopf.ConnectionInfo:
        """kopf talks to the API server the reconciler uses, with the same credentials."""
        c = credentials(wiring.reconciler.api.api_client)
        return kopf.ConnectionInfo(
            server=c.server,
            ca_path=c.ca_path,
            insecure=c.insecure,
            scheme=c.scheme,
            token=c.token,
            certificate_path=c.certificate_path,
            private_key_path=c.private_key_path,
        )

    @kopf.on.startup(registry=reg)
    def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings, watch, workers)

    @kopf.on.resume(g, v, p, registry=reg)
    @kopf.on.create(g, v, p, registry=reg)
    @kopf.on.update(g, v, p, registry=reg)
    async def changed(*, namespace: str | None, name: str, **_: Any) -> None:
        if namespace:
            wiring.enqueue(namespace, name)

    @kopf.timer(g, v, p, interval=resync_s, initial_delay=resync_s, registry=reg)
    async def resync(*, namespace: str | None, name: str, **_: Any) -> None:
        if namespace:
            wiring.enqueue(namespace, name)

    @kopf.on.delete(g, v, p, registry=reg)
    async def deleted(*, body: kopf.Body, namespace: str | None, name: str, **_: Any) -> None:
        if namespace:
            wiring.forget(namespace, name)
        await asyncio.to_thread(wiring.reconciler.clean_up, dict(body))  # API calls, bounded retries

    async def child(*, namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
        job = labels.get(names.JOB_LABEL)
        if namespace and job and job in wiring.known.get(namespace, set()):
            wiring.queue.add((namespace, job))

    for group, version, plural in (("batch", "v1", "jobs"), ("", "v1", "pods"), ("", "v1", "serviceaccounts")):
        kopf.on.event(group, version, plural, labels=guarded, registry=reg)(child)

    @kopf.on.event("networking.k8s.io", "v1", "networkpolicies", registry=reg)
    async def policy(
        *, type: str | None, body: kopf.Body, namespace: str | None, labels: Mapping[str, str], **_: Any
    ) -> None:
        """Ours: requeue its job. Anyone else's: remember it and requeue every job of the namespace (it may
        select their pods)."""
        if labels.get(names.MANAGED_BY_LABEL) == names.MANAGED_BY and labels.get(names.JOB_LABEL):
            await child(namespace=namespace, labels=labels)
            return
        wiring.reconciler.foreign.seen(dict(body), deleted=type == "DELETED")
        for job in list(wiring.known.get(namespace or "", set())):
            wiring.queue.add((namespace or "", job))

    return reg
