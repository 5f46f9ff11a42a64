"""The guard: the collector, one detection engine per job in a thread of its own, and the enforcer, joined.

    reconcile (worker thread) --sync(atj, pods)--> guard inbox --> detection thread
    collector (its own asyncio loop) --samples--> guard inbox      |  Engine per job: observe, tick, update
                                                                   |  (each sample merged with the job's DCGM
    DCGM poller (its own threads) --one query per job per 10 s-->  |   readings first, from the poller's cache)
                                                                   v
                                                 enforcer (thread pool, API calls through trainguard.k8s)

The event loop kopf runs on never sees a sample. The inbox is bounded: when the detection thread falls behind,
new samples are dropped (counted, logged once a minute) rather than memory growing; the engine's gap and
silence rules then see the holes, as they would see a sensor that stalls.

What the engine needs to know comes from the API server, never from samples: the job's pod IPs
(`status.podIPs`), the cluster DNS Service's ClusterIPs (or `--dns-ip`), the IPs of the pods an egress selector
selects. Its state is checkpointed into the AgentTrainingJob's `status.detection` (bounded, JSON patch so that
nothing stale is merged in) and restored from there when the operator starts; a policy edit reaches the engine
through `Engine.update` at the next sync.

For a job with `spec.monitoring.prometheus`, DCGM's readings of its pods' GPUs (trainguard.sources: one query per
job per interval, cached with a bound age) are merged into each sample before the engine judges it: DCGM's profile
over the sensor's (docs/dcgm.md says why). When that Prometheus fails, detection goes on with the sensor's readings;
the job's Degraded condition says so (the reconcile asks `degraded`), a Warning Event and a log line are posted once
per outage, and `trainguard_dcgm_unavailable_jobs` counts it.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainguard.api import sensorproto, v1alpha1
from trainguard.api.sample import Sample
from trainguard.builders import names, sensorkey
from trainguard.detection import Decision, Engine, EngineContext
from trainguard.detection.rules.sensor import SENSOR_IDENTITY, SENSOR_RESTARTED
from trainguard.detection.violation import Finding
from trainguard.k8s.client import Api, ApiError
from trainguard.k8s.collector import Collector, CollectorSettings, Target
from trainguard.k8s.enforcer import Enforcer, EnforcerSettings, Order, retry
from trainguard.k8s.metrics import OperatorMetrics
from trainguard.sources import DcgmPoller, DcgmSettings, merge_dcgm, single_mig

log = logging.getLogger("trainguard.guard")

#: The checkpoint in status is kept under this many bytes of JSON; past it, pods without findings are left out.
MAX_CHECKPOINT_BYTES = 256 * 1024
#: A checkpoint whose only change is the pods' sequence numbers is written at most this often.
SEQ_CHECKPOINT_S = 60.0
#: A job's key Secret is applied again after this many seconds.
SECRET_REAPPLY_S = 300.0
Job = tuple[str, str]


@dataclass(frozen=True)
class GuardSettings:
    master_key: bytes
    sensor_port: int = 9400
    #: None: read the cluster DNS Service (dns_namespace/dns_service) from the API.
    dns_ips: frozenset[str] | None = None
    dns_namespace: str = "kube-system"
    dns_service: str = "kube-dns"
    checkpoint_interval_s: float = 5.0
    tick_interval_s: float = 1.0
    inbox_size: int = 20000
    collector: CollectorSettings = field(default_factory=CollectorSettings)
    enforcer: EnforcerSettings = field(default_factory=EnforcerSettings)
    dcgm: DcgmSettings = field(default_factory=DcgmSettings)


@dataclass
class _JobState:
    engine: Engine
    uid: str
    key: bytes
    spec_json: str
    context: EngineContext
    keep: tuple[sensorproto.AllowedPeer, ...]
    restarts: dict[str, int] = field(default_factory=dict)
    checkpointed: str = ""
    written_at: float = 0.0
    quarantined: int = 0
    pods: frozenset[str] = frozenset()


class Guard:
    """Start it once (`start`); `sync` after every reconcile that read the job and its pods; `forget` when gone."""

    def __init__(self, api: Api, metrics: OperatorMetrics, settings: GuardSettings) -> None:
        self.api = api
        self.settings = settings
        self.metrics = metrics.enforcement
        self.enforcer = Enforcer(api, self.metrics, settings.enforcer)
        self._inbox: queue.Queue[tuple[Any, ...]] = queue.Queue(settings.inbox_size)
        self._jobs: dict[Job, _JobState] = {}
        self._dropped = 0
        self._urgent: set[Job] = set()
        self._namespaces: set[str] = set()
        self._secrets: dict[tuple[str, str, str], float] = {}
        self._writes: dict[Job, dict[str, Any]] = {}
        self._writes_lock = threading.Lock()
        self._write_wanted = threading.Event()
        self._writer_thread = threading.Thread(target=self._writer, name="checkpoint", daemon=True)
        self._stop = threading.Event()
        self._dns: tuple[float, frozenset[str]] = (0.0, frozenset())
        self.collector: Collector | None = None
        self._thread = threading.Thread(target=self._loop, name="detection", daemon=True)
        self.dcgm = DcgmPoller(settings.dcgm, on_change=self._dcgm_changed, on_query=self._dcgm_query)
        #: The job's AgentTrainingJob as an Event's involvedObject (for the DCGM outage Event).
        self._objects: dict[Job, dict[str, Any]] = {}
        #: Queues a reconcile of the job (set by the run command): its Degraded condition follows DCGM's availability.
        self.requeue: Callable[[Job], None] | None = None

    def start(self) -> None:
        self.collector = Collector(self._sample, self._forged, self.settings.collector)
        self._thread.start()
        self._writer_thread.start()
        self.dcgm.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.dcgm.stop()
        if self.collector is not None:
            self.collector.stop()

    # --- inputs (any thread) ---------------------------------------------------------------------------

    def sync(self, atj: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> None:
        """The job as the reconcile just read it: ensure its key Secret, hand the rest to the detection thread."""
        meta = atj["metadata"]
        uid = str(meta.get("uid") or "")
        key = sensorkey.job_key(self.settings.master_key, uid)
        applied = (meta["namespace"], meta["name"], uid)
        if time.monotonic() - self._secrets.get(applied, -SECRET_REAPPLY_S) >= SECRET_REAPPLY_S:
            # Applied once per job and then every few minutes (a deleted or edited Secret comes back), not at
            # every reconcile: one request fewer per reconcile.
            self.api.apply(sensorkey.sensor_key_secret(atj, key))
            self._secrets[applied] = time.monotonic()
        peers = self._selector_peers(atj)
        self._inbox.put(("sync", dict(atj), [dict(p) for p in pods], key, self._dns_ips(), peers))

    def forget(self, namespace: str, name: str) -> None:
        for applied in [k for k in self._secrets if k[:2] == (namespace, name)]:
            self._secrets.pop(applied, None)
        self._inbox.put(("forget", (namespace, name)))

    def degraded(self, namespace: str, name: str) -> list[tuple[str, str]]:
        """What weakens this job's guard, as (reason, message) for its Degraded condition (the reconcile asks)."""
        error = self.dcgm.cache.error((namespace, name))
        if error is None:
            return []
        return [("PrometheusUnreachable", f"DCGM readings not read, detection uses the sensor's alone: {error}")]

    def _sample(self, target: Target, sample: Sample, arrived: float) -> None:
        try:
            self._inbox.put_nowait(("sample", target.job, target.pod, sample, arrived))
        except queue.Full:
            self._dropped += 1

    def _forged(self, target: Target, why: str) -> None:
        self._inbox.put(("forged", target.job, target.pod, why))

    # --- the detection thread -------------------------------------------------------------------------

    def _loop(self) -> None:
        next_tick = time.monotonic()
        next_checkpoint = time.monotonic() + self.settings.checkpoint_interval_s
        while not self._stop.is_set():
            try:
                item = self._inbox.get(timeout=max(0.0, next_tick - time.monotonic()))
            except queue.Empty:
                item = None
            try:
                if item is not None:
                    self._handle(item)
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + self.settings.tick_interval_s
                    for job, state in list(self._jobs.items()):
                        self._act(job, state, state.engine.tick())
                    self._gauges()
                if self._urgent:
                    # A decision was just handed on: its standing violation goes into status now, so that an
                    # operator killed meanwhile does not decide it again with a new first-seen time.
                    urgent, self._urgent = self._urgent, set()
                    self._checkpoint_all(urgent)
                if now >= next_checkpoint:
                    next_checkpoint = now + self.settings.checkpoint_interval_s
                    self._checkpoint_all()
            except Exception:
                log.exception("detection loop")

    def _handle(self, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if kind == "sample":
            _, job, pod, sample, _arrived = item
            state = self._jobs.get(job)
            if state is not None and pod in state.pods:
                gpus = self.dcgm.cache.readings(job, pod.split("/", 1)[1], time.monotonic())
                if gpus:
                    sample = merge_dcgm(sample, gpus, mig=single_mig(sample, gpus))
                decisions = state.engine.observe(pod, sample)
                if decisions:
                    self._act(job, state, decisions, sample)
        elif kind == "forged":
            _, job, pod, why = item
            state = self._jobs.get(job)
            if state is not None and pod in state.pods:
                finding = Finding(SENSOR_IDENTITY, "signature", {"dialled": pod, "claimed": "", "why": why[:200]})
                self._act(job, state, state.engine.report(pod, finding))
        elif kind == "sync":
            self._sync(*item[1:])
        elif kind == "forget":
            job = item[1]
            self._jobs.pop(job, None)
            self.dcgm.cache.forget(job)
            self._objects.pop(job, None)
            if self.collector is not None:
                self.collector.forget(job)

    def _sync(
        self,
        atj: dict[str, Any],
        pods: list[dict[str, Any]],
        key: bytes,
        dns: frozenset[str],
        peers: dict[int, frozenset[str]],
    ) -> None:
        meta = atj["metadata"]
        job: Job = (meta["namespace"], meta["name"])
        try:
            model = v1alpha1.AgentTrainingJob.model_validate(atj)
        except ValueError as error:
            log.info("not guarding %s/%s: %s", *job, str(error)[:200])
            return
        policy = model.spec.policy
        running = [p for p in pods if _running(p)]
        ips = frozenset(ip for p in running for ip in _ips(p))
        context = EngineContext(dns_resolvers=dns, job_pod_ips=ips, selector_peers=peers)
        spec_json = json.dumps(atj["spec"].get("policy"), sort_keys=True) + json.dumps(
            atj["spec"].get("monitoring"), sort_keys=True
        )
        state = self._jobs.get(job)
        uid = str(meta.get("uid"))
        keep = _keep(policy, ips, dns, peers)
        if state is None or state.uid != uid:
            engine = self._restore(atj, model, context)
            state = self._jobs[job] = _JobState(engine, uid, key, spec_json, context, keep)
        elif state.spec_json != spec_json or state.context != context:
            decisions = state.engine.update(policy=policy, context=context, monitoring=model.spec.monitoring)
            state.spec_json, state.context, state.keep = spec_json, context, keep
            self._act(job, state, decisions)
        names_now = frozenset(f"{job[0]}/{p['metadata']['name']}" for p in running)
        for gone in state.pods - names_now:
            state.engine.forget(gone)
            state.restarts.pop(gone, None)
        for pod in names_now - state.pods:
            state.engine.expect(pod)
        state.pods = names_now
        state.quarantined = sum(
            1
            for p in pods
            if names.QUARANTINED_LABEL in (p["metadata"].get("labels") or {})
            and not p["metadata"].get("deletionTimestamp")
        )
        # Tamper evidence from the kubelet, through the API server: the sensor container restarted.
        for p in running:
            pod = f"{job[0]}/{p['metadata']['name']}"
            sensor = _sensor_status(p)
            count = int((sensor or {}).get("restartCount") or 0)
            if count > state.restarts.get(pod, 0):
                state.restarts[pod] = count
                last = ((sensor or {}).get("lastState") or {}).get("terminated") or {}
                evidence = {
                    "restartCount": count,
                    "lastExitCode": last.get("exitCode"),
                    "lastReason": str(last.get("reason") or ""),
                    "source": "pod status",
                }
                self._act(job, state, state.engine.report(pod, Finding(SENSOR_RESTARTED, f"restart-{count}", evidence)))
        targets = {
            f"{job[0]}/{p['metadata']['name']}": Target(
                job, f"{job[0]}/{p['metadata']['name']}", _ips(p)[0], self.settings.sensor_port, key
            )
            for p in running
            if _ips(p)
        }
        if self.collector is not None:
            self.collector.want(job, targets)
        prometheus = model.spec.monitoring.prometheus
        if prometheus is not None:
            self._objects[job] = {
                "apiVersion": atj.get("apiVersion"),
                "kind": atj.get("kind"),
                "metadata": {"name": job[1], "namespace": job[0], "uid": uid},
            }
            self.dcgm.cache.want(job, prometheus.url, job[0], frozenset(p.split("/", 1)[1] for p in names_now))
        else:
            self.dcgm.cache.forget(job)
        self.enforcer.resume(job, atj, pods, key, keep)

    def _restore(self, atj: Mapping[str, Any], model: v1alpha1.AgentTrainingJob, context: EngineContext) -> Engine:
        snapshot = (atj.get("status") or {}).get("detection")
        if snapshot:
            try:
                return Engine.restore(snapshot, model.spec.policy, context, monitoring=model.spec.monitoring)
            except ValueError as error:
                log.warning("engine state of %s/%s not restored: %s", *_job(atj), error)
        return Engine(model.spec.policy, context, monitoring=model.spec.monitoring)

    def _act(self, job: Job, state: _JobState, decisions: Sequence[Decision], sample: Sample | None = None) -> None:
        for d in decisions:
            if d.kind == "cleared":
                continue
            pid = d.violation.evidence.get("pid")
            remotes: tuple[str, ...] = ()
            if sample is not None and isinstance(pid, int):
                remotes = tuple(
                    sorted({f"{c.remote.address}:{c.remote.port}" for c in sample.connections if c.pid == pid})
                )[:16]
            self.enforcer.submit(Order(job, d, state.key, state.keep, remotes))
            self._urgent.add(job)

    def _dcgm_query(self, outcome: str, _seconds: float) -> None:
        self.metrics.dcgm_queries.labels(outcome).inc()

    def _dcgm_changed(self, job: Job, error: str | None) -> None:
        """A poller thread: the job's Prometheus started failing (error) or is back (None). Once per change: a
        Warning Event on the job when it starts failing, and a reconcile so that its Degraded condition says so."""
        self.metrics.dcgm_unavailable.set(self.dcgm.cache.failing())
        obj = self._objects.get(job)
        if error is not None and obj is not None:
            self.enforcer._event(  # the enforcer's Event writer (retries, the trainguard source)
                obj,
                "PrometheusUnreachable",
                f"DCGM readings not read; detection goes on with the sensor's own readings: {error}",
            )
        if self.requeue is not None:
            self.requeue(job)

    def _checkpoint_all(self, only: set[Job] | None = None) -> None:
        """Hand the writer thread each job's snapshot when what matters changed (violations, debounce, escalation
        counts) or, for the sequence numbers alone, once a minute: the detection thread never waits for the API."""
        now = time.monotonic()
        for job, state in list(self._jobs.items()):
            if only is not None and job not in only:
                continue
            doc = state.engine.snapshot()
            material = json.dumps(
                {**doc, "pods": {k: v.get("tracks") for k, v in doc["pods"].items() if v.get("tracks")}},
                sort_keys=True,
            )
            if material == state.checkpointed and now - state.written_at < SEQ_CHECKPOINT_S:
                continue
            text = json.dumps(doc, sort_keys=True)
            if len(text) > MAX_CHECKPOINT_BYTES:
                doc["pods"] = {k: v for k, v in doc["pods"].items() if v.get("tracks")}
                text = json.dumps(doc, sort_keys=True)
                if len(text) > MAX_CHECKPOINT_BYTES:
                    log.warning("engine state of %s/%s is %d bytes: not checkpointed", *job, len(text))
                    continue
            state.checkpointed, state.written_at = material, now
            with self._writes_lock:
                self._writes[job] = doc
            self._write_wanted.set()

    def _writer(self) -> None:
        while not self._stop.is_set():
            self._write_wanted.wait(1.0)
            self._write_wanted.clear()
            with self._writes_lock:
                writes, self._writes = self._writes, {}
            for job, doc in writes.items():
                try:
                    self._patch_status(job, [{"op": "add", "path": "/status/detection", "value": doc}])
                except ApiError as error:
                    log.info("checkpoint of %s/%s: %s", *job, error)
                    state = self._jobs.get(job)  # a dict read; the detection thread owns the writes
                    if state is not None:
                        state.checkpointed = ""  # written again at the next round

    def _patch_status(self, job: Job, patch: list[dict[str, Any]]) -> None:
        def call() -> dict[str, Any]:
            return self.api.patch("AgentTrainingJob", job[0], job[1], patch, "status", "application/json-patch+json")

        retry(call, attempts=3)

    def _gauges(self) -> None:
        self.metrics.monitored.set(sum(len(s.pods) for s in self._jobs.values()))
        per_namespace: dict[str, int] = dict.fromkeys(self._namespaces, 0)
        for (namespace, _), state in self._jobs.items():
            per_namespace[namespace] = per_namespace.get(namespace, 0) + state.quarantined
        for namespace, count in per_namespace.items():
            self.metrics.quarantined.labels(namespace).set(count)
        self._namespaces = set(per_namespace)
        if self.collector is not None:
            for st, n in self.collector.states().items():
                self.metrics.streams.labels(st).set(n)
        if self._dropped:
            log.warning("detection fell behind: %d samples dropped", self._dropped)
            self._dropped = 0

    # --- facts from the API --------------------------------------------------------------------------

    def _dns_ips(self) -> frozenset[str]:
        if self.settings.dns_ips is not None:
            return self.settings.dns_ips
        read_at, ips = self._dns
        if time.monotonic() - read_at < 60 and read_at:
            return ips
        try:
            svc = self.api.get("Service", self.settings.dns_namespace, self.settings.dns_service)
        except ApiError as error:
            log.info("cluster DNS Service not read: %s", error)
            return ips
        spec = (svc or {}).get("spec") or {}
        found = frozenset(ip for ip in (spec.get("clusterIPs") or [spec.get("clusterIP")]) if ip and ip != "None")
        self._dns = (time.monotonic(), found)
        return found

    def _selector_peers(self, atj: Mapping[str, Any]) -> dict[int, frozenset[str]]:
        """IPs of the pods each selector egress rule selects (in the job's namespace, or in the namespaces its
        namespaceSelector selects)."""
        out: dict[int, frozenset[str]] = {}
        rules = ((atj.get("spec") or {}).get("policy") or {}).get("network", {}).get("egress") or []
        namespace = atj["metadata"]["namespace"]
        for index, rule in enumerate(rules):
            if rule.get("cidr"):
                continue
            try:
                if rule.get("namespaceSelector") is not None:
                    spaces = [
                        n["metadata"]["name"]
                        for n in self.api.list("Namespace", None, _selector(rule["namespaceSelector"]) or None)
                    ]
                else:
                    spaces = [namespace]
                pods_selector = _selector(rule.get("podSelector") or {})
                ips = {ip for ns in spaces for p in self.api.list("Pod", ns, pods_selector or None) for ip in _ips(p)}
            except ApiError as error:
                log.info("selector peers of rule %d not read: %s", index, error)
                ips = set()
            out[index] = frozenset(ips)
        return out


def _selector(sel: Mapping[str, Any]) -> str:
    parts = [f"{k}={v}" for k, v in (sel.get("matchLabels") or {}).items()]
    for e in sel.get("matchExpressions") or []:
        op, key, values = e.get("operator"), e.get("key"), e.get("values") or []
        if op == "In":
            parts.append(f"{key} in ({','.join(values)})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({','.join(values)})")
        elif op == "Exists":
            parts.append(str(key))
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts)


def _keep(
    policy: v1alpha1.Policy, ips: frozenset[str], dns: frozenset[str], peers: Mapping[int, frozenset[str]]
) -> tuple[sensorproto.AllowedPeer, ...]:
    """What a cut leaves open: the policy's allowed egress (a rule with `except` is left out: the cut may then take
    more than it must, never less), the job's own pods, the DNS resolvers on 53."""
    out: list[sensorproto.AllowedPeer] = []
    net = policy.network

    def ports(rule: v1alpha1.EgressRule) -> list[int]:
        found: list[int] = []
        for p in rule.ports:
            found.extend(range(p.port, (p.end_port or p.port) + 1))
        return found[:1024]

    for index, rule in enumerate(net.egress):
        if rule.cidr is not None:
            if not rule.except_:
                out.append(sensorproto.AllowedPeer(cidr=rule.cidr, ports=ports(rule)))
        else:
            out.extend(sensorproto.AllowedPeer(cidr=_host(ip), ports=ports(rule)) for ip in peers.get(index, ()))
    if net.allow_intra_job:
        out.extend(sensorproto.AllowedPeer(cidr=_host(ip)) for ip in sorted(ips))
    if net.allow_dns:
        out.extend(sensorproto.AllowedPeer(cidr=_host(ip), ports=[53]) for ip in sorted(dns))
    return tuple(out)


def _host(ip: str) -> str:
    return f"{ip}/128" if ":" in ip else f"{ip}/32"


def _running(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") == "Running" and not pod["metadata"].get("deletionTimestamp")


def _ips(pod: Mapping[str, Any]) -> list[str]:
    status = pod.get("status") or {}
    ips = [str(i["ip"]) for i in status.get("podIPs") or [] if i.get("ip")]
    if not ips and status.get("podIP"):
        ips = [str(status["podIP"])]
    return ips


def _sensor_status(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    status = pod.get("status") or {}
    for s in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        if s.get("name") == names.SENSOR_CONTAINER:
            return s  # type: ignore[no-any-return]
    return None


def _job(atj: Mapping[str, Any]) -> Job:
    return (atj["metadata"]["namespace"], atj["metadata"]["name"])


#: For callers that want a typed factory (the run command).
GuardFactory = Callable[[Api, OperatorMetrics], Guard]
