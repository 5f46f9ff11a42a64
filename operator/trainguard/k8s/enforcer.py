"""The enforcer: a decision in, the API server's state out. Every action is idempotent, read back from the API.

State lives in the API only (docs/enforcement.md): the pod's `trainguard.io/quarantined` label and
`trainguard.io/evidence` annotation, the `trainguard.io/cut` annotation once the sensor confirmed the cut, the pod
condition `trainguard.io/Quarantined`, the AgentTrainingJob's `spec.suspend` and its status. Each step first reads
whether it is already done, so that an operator killed between two steps and started again finishes the same
action without doing any step twice; `resume` picks up a quarantine or a delete whose later steps are missing.

Steps, in order (the failpoint names `TRAINGUARD_FAILPOINT` accepts, each `os._exit`s the operator right after):

- record: the violation in the AgentTrainingJob's status (`violations`, `violationCount`, `Violating`), then the
  Events on the pod and the job (only when the status entry was new: a restart posts no second Event);
- Quarantine: `quarantine.after-record`, label + evidence annotation (`quarantine.after-label`), `POST /v2/cut`
  (`quarantine.after-cut`), the `cut` annotation; no confirmed CutReport within `cut_timeout_s`: Delete;
- Delete: the pod condition through `pods/status` (`delete.after-condition`), then the deletion;
- Suspend: every running pod quarantined, then `spec.suspend` on the AgentTrainingJob;
- dryRun: record only (the status entry says `dryRun: true`, the Event's reason starts with `DryRun`).
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from trainguard.api import sensorproto
from trainguard.api.v1alpha1 import MAX_STATUS_VIOLATIONS, Action, Severity
from trainguard.builders import names
from trainguard.detection import Decision
from trainguard.detection.violation import Violation, iso, summarize
from trainguard.k8s.client import Api, ApiError
from trainguard.k8s.metrics import EnforcementMetrics

log = logging.getLogger("trainguard.enforcer")

CUT_ANNOTATION = "trainguard.io/cut"
#: On the AgentTrainingJob while a Suspend is under way (its evidence): set first, removed with spec.suspend.
SUSPENDING_ANNOTATION = "trainguard.io/suspending"
FAILPOINT_ENV = "TRAINGUARD_FAILPOINT"
#: Statuses worth retrying: conflicts, throttling, server faults; 0 = unreachable, reset, timed out.
RETRIABLE = frozenset({0, 409, 429, 500, 502, 503, 504})


def failpoint(name: str) -> None:
    """Die here if the environment asks to (crash-safety tests)."""
    if os.environ.get(FAILPOINT_ENV) == name:
        log.warning("failpoint %s: exiting", name)
        logging.shutdown()
        os._exit(17)


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


T = TypeVar("T")


def retry(call: Callable[[], T], attempts: int = 8, base_s: float = 0.1, max_s: float = 5.0) -> T:
    """`call`, again after a backoff while the API server answers with a retriable status (Retry-After is honoured
    when it says more than the backoff)."""
    delay = base_s
    for attempt in range(attempts):
        try:
            return call()
        except ApiError as error:
            if error.status not in RETRIABLE or attempt == attempts - 1:
                raise
            wait = delay
            if error.status == 429:  # the API server says how long in the message's details; 1 s is its default
                wait = max(wait, 1.0)
            time.sleep(min(wait, max_s))
            delay = min(delay * 2, max_s)
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class EnforcerSettings:
    sensor_port: int = 9400
    #: Seconds for the sensor to answer a cut with a confirmed report; past it, Delete.
    cut_timeout_s: float = 2.0
    workers: int = 4
    signal: str = "STOP"


@dataclass(frozen=True)
class Order:
    """One decision to carry out, with what the enforcer needs besides the API's state."""

    job: tuple[str, str]
    decision: Decision
    key: bytes
    keep: tuple[sensorproto.AllowedPeer, ...]
    #: The remotes the offending process held in the pod's latest sample (for the evidence).
    remotes: tuple[str, ...] = ()


class Enforcer:
    def __init__(self, api: Api, metrics: EnforcementMetrics, settings: EnforcerSettings | None = None) -> None:
        self.api = api
        self.metrics = metrics
        self.settings = settings or EnforcerSettings()
        self._pool = ThreadPoolExecutor(self.settings.workers, thread_name_prefix="enforce")
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._resuming: set[str] = set()

    def submit(self, order: Order) -> None:
        self._pool.submit(self._run, order)

    def stop(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)

    def _lock(self, pod: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(pod, threading.Lock())

    def _run(self, order: Order) -> None:
        d = order.decision
        try:
            with self._lock(d.violation.pod):
                self.carry_out(order)
        except Exception:
            log.exception("enforcing %s on %s failed", d.action, d.violation.pod)
            self._count(order.job, d.action, "failed")

    # --- the ladder ----------------------------------------------------------------------------------

    def carry_out(self, order: Order) -> None:
        d = order.decision
        action: Action = d.action
        atj = retry(lambda: self.api.get("AgentTrainingJob", *order.job))
        if atj is None:
            return
        if d.dry_run or action == "Alert":
            if self._record(atj, d):
                self._accepted(order, "dry-run" if d.dry_run else "applied")
            return
        namespace, name = d.violation.pod.split("/", 1)
        if action == "Suspend":
            self.suspend(order, atj)
            return
        pod = retry(lambda: self.api.get("Pod", namespace, name))
        if pod is None or pod["metadata"].get("deletionTimestamp"):
            return
        marked = _marked(pod)
        new = order
        if marked is not None and _rank(marked.action) >= _rank(action):
            # Already under way (a previous decision, or a previous run of the operator): finish that one.
            order = Order(order.job, marked, order.key, order.keep, order.remotes)
        if order.decision.action == "Quarantine":
            if self.quarantine(order, atj, pod) and new is not order:
                self.cut_again(new, atj, namespace, name)
        else:
            self.delete(order, atj, pod)

    def quarantine(self, order: Order, atj: Mapping[str, Any], pod: Mapping[str, Any], *, record: bool = True) -> bool:
        """Label + evidence (one write), record, cut; False (and Delete) when the cut is not confirmed."""
        meta = pod["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        if names.QUARANTINED_LABEL not in (meta.get("labels") or {}):
            patch = {"metadata": {"labels": {names.QUARANTINED_LABEL: "true"}}}
            if _marked(pod) is None:
                patch["metadata"]["annotations"] = {names.EVIDENCE_ANNOTATION: _evidence(order)}
            retry(lambda: self.api.patch("Pod", namespace, name, patch))
            if record:
                self._accepted(order, None)
        failpoint("quarantine.after-label")
        if record:
            self._record(atj, order.decision)
            failpoint("quarantine.after-record")
        if (meta.get("annotations") or {}).get(CUT_ANNOTATION, "").startswith("confirmed"):
            return True
        ip = _pod_ip(pod)
        report = self._cut(order, f"{namespace}/{name}", ip) if ip else None
        failpoint("quarantine.after-cut")
        if report is not None and report.confirmed:
            mark = _cut_mark(report.nonce, _pids(order))
            retry(lambda: self.api.patch("Pod", namespace, name, {"metadata": {"annotations": {CUT_ANNOTATION: mark}}}))
            self._count(order.job, "Quarantine", "applied")
            return True
        return self._unconfirmed(order, atj, namespace, name)

    def cut_again(self, order: Order, atj: Mapping[str, Any], namespace: str, name: str) -> None:
        """A new violation on a pod already quarantined and cut: a second tunnel, or a process that was not the
        first decision's. The label isolates new connections, but what this process holds now (a connection to
        an address the first cut kept, say) is cut by a command of its own that stops it too. Once per process:
        the cut annotation lists the pids already stopped, so a repeated decision or a restarted operator sends
        nothing twice. Unconfirmed, it escalates to Delete as the first cut does."""
        pids = _pids(order)
        pod = retry(lambda: self.api.get("Pod", namespace, name))
        if not pids or pod is None or pod["metadata"].get("deletionTimestamp"):
            return
        mark = (pod["metadata"].get("annotations") or {}).get(CUT_ANNOTATION, "")
        done = _cut_pids(mark)
        if not mark.startswith("confirmed") or pids <= done:
            return
        self._record(atj, order.decision)
        ip = _pod_ip(pod)
        report = self._cut(order, f"{namespace}/{name}", ip) if ip else None
        if report is not None and report.confirmed:
            again = _cut_mark(report.nonce, done | pids)
            retry(
                lambda: self.api.patch("Pod", namespace, name, {"metadata": {"annotations": {CUT_ANNOTATION: again}}})
            )
            self._count(order.job, "Quarantine", "applied")
            return
        self._unconfirmed(order, atj, namespace, name)

    def _unconfirmed(self, order: Order, atj: Mapping[str, Any], namespace: str, name: str) -> bool:
        log.warning("cut of %s/%s not confirmed: deleting it", namespace, name)
        self._count(order.job, "Quarantine", "unconfirmed")
        escalated = Decision(order.decision.kind, order.decision.violation, "Delete", False, order.decision.time)
        fresh = retry(lambda: self.api.get("Pod", namespace, name))
        if fresh is not None:
            self.delete(Order(order.job, escalated, order.key, order.keep, order.remotes), atj, fresh, record=False)
        return False

    def delete(self, order: Order, atj: Mapping[str, Any], pod: Mapping[str, Any], *, record: bool = True) -> None:
        """Evidence (the intent), the Quarantined condition through pods/status, record, delete."""
        meta = pod["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        marked = _marked(pod)
        if marked is None or marked.action != "Delete":
            retry(
                lambda: self.api.patch(
                    "Pod",
                    namespace,
                    name,
                    {"metadata": {"annotations": {names.EVIDENCE_ANNOTATION: _evidence(order)}}},
                )
            )
            failpoint("delete.after-evidence")
        if not _has_condition(pod):
            condition = {
                "type": names.QUARANTINED_CONDITION,
                "status": "True",
                "reason": "Violation",
                "message": summarize(order.decision.violation.evidence, 1024),
                "lastTransitionTime": now_iso(),
            }
            retry(
                lambda: self.api.patch(
                    "Pod",
                    namespace,
                    name,
                    {"status": {"conditions": [condition]}},
                    subresource="status",
                    content_type="application/strategic-merge-patch+json",
                )
            )
            if record:
                self._accepted(order, None)
        failpoint("delete.after-condition")
        if record:
            self._record(atj, order.decision)
            failpoint("delete.after-record")
        retry(lambda: self.api.delete("Pod", namespace, name))
        self._count(order.job, "Delete", "applied")

    def suspend(self, order: Order, atj: Mapping[str, Any]) -> None:
        """The intent on the AgentTrainingJob (an annotation), every running pod quarantined, then spec.suspend."""
        namespace, job = order.job
        if atj["spec"].get("suspend") and not _annotation(atj, SUSPENDING_ANNOTATION):
            return
        if not _annotation(atj, SUSPENDING_ANNOTATION):
            atj = retry(
                lambda: self.api.patch(
                    "AgentTrainingJob",
                    namespace,
                    job,
                    {"metadata": {"annotations": {SUSPENDING_ANNOTATION: _evidence(order)}}},
                )
            )
            self._accepted(order, None)
            self._record(atj, order.decision)
        failpoint("suspend.after-intent")
        for pod in retry(lambda: self.api.list("Pod", namespace, f"{names.JOB_LABEL}={job}")):
            if (pod.get("status") or {}).get("phase") == "Running" and not pod["metadata"].get("deletionTimestamp"):
                self.quarantine(order, atj, pod, record=False)
        failpoint("suspend.after-quarantine")
        retry(
            lambda: self.api.patch(
                "AgentTrainingJob",
                namespace,
                job,
                {"metadata": {"annotations": {SUSPENDING_ANNOTATION: None}}, "spec": {"suspend": True}},
            )
        )
        self._count(order.job, "Suspend", "applied")

    def resume(
        self,
        job: tuple[str, str],
        atj: Mapping[str, Any],
        pods: Sequence[Mapping[str, Any]],
        key: bytes,
        keep: Sequence[sensorproto.AllowedPeer],
    ) -> None:
        """Finish what was started (the API says so, never memory): a job marked suspending is suspended; a pod
        with evidence whose quarantine is not confirmed is cut; one marked for Delete is deleted."""
        suspending = _annotation(atj, SUSPENDING_ANNOTATION)
        if suspending:
            decision = _decision_from(suspending, f"{job[0]}/")
            self._pool.submit(self._run, Order(job, decision, key, tuple(keep)))
        for pod in pods:
            meta = pod["metadata"]
            if meta.get("deletionTimestamp") or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            marked = _marked(pod)
            if marked is None:
                continue
            cut_done = (meta.get("annotations") or {}).get(CUT_ANNOTATION, "").startswith("confirmed")
            if marked.action == "Quarantine" and cut_done:
                continue
            with self._guard:
                if f"{meta['namespace']}/{meta['name']}" in self._resuming:
                    continue
                self._resuming.add(f"{meta['namespace']}/{meta['name']}")
            self._pool.submit(self._resume_one, Order(job, marked, key, tuple(keep)))

    def _resume_one(self, order: Order) -> None:
        try:
            self._run(order)
        finally:
            with self._guard:
                self._resuming.discard(order.decision.violation.pod)

    # --- steps -------------------------------------------------------------------------------------

    def _record(self, atj: Mapping[str, Any], d: Decision) -> bool:
        """The violation in the job's status (once); True when it was new. Optimistic concurrency: the patch
        carries the resourceVersion read, a 409 reads again."""
        v = d.violation
        pod_name = v.pod.split("/", 1)[1]
        entry = {
            "time": iso(v.first_seen),
            "pod": pod_name,
            "rule": v.rule,
            "severity": v.severity,
            "evidence": summarize(v.evidence, 4096),
            "action": d.action,
            "dryRun": d.dry_run,
        }
        namespace, name = atj["metadata"]["namespace"], atj["metadata"]["name"]
        current: Mapping[str, Any] | None = atj
        for _ in range(10):
            if current is None:
                return False
            status = dict(current.get("status") or {})
            records = list(status.get("violations") or [])
            if any(_same_record(r, entry) for r in records):
                return False
            records = [*records, entry][-MAX_STATUS_VIOLATIONS:]
            status["violations"] = records
            status["violationCount"] = int(status.get("violationCount") or 0) + 1
            status["lastViolationTime"] = entry["time"]
            status["conditions"] = _violating(status.get("conditions") or [], entry)
            try:
                self.api.patch(
                    "AgentTrainingJob",
                    namespace,
                    name,
                    {"metadata": {"resourceVersion": current["metadata"]["resourceVersion"]}, "status": status},
                    subresource="status",
                )
                break
            except ApiError as error:
                if error.status not in RETRIABLE:
                    raise
                time.sleep(0.05)
                current = retry(lambda: self.api.get("AgentTrainingJob", namespace, name))
        else:
            raise ApiError(409, "Conflict", "status kept changing under the enforcer")
        self.metrics.violations.labels(namespace, name, v.rule, v.severity).inc()
        failpoint("record.after-status")
        reason = ("DryRun" if d.dry_run else "") + ("Violation" if d.action == "Alert" else d.action)
        message = f"{v.rule} ({v.severity}) in pod {pod_name}: {d.action}{' (dry run)' if d.dry_run else ''}: "
        message += v.summary()
        self._event(atj, reason, message)
        self._event(
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod_name, "namespace": namespace}},
            reason,
            message,
        )
        return True

    def _event(self, obj: Mapping[str, Any], reason: str, message: str) -> None:
        meta = obj["metadata"]
        stamp = now_iso()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                **({"uid": meta["uid"]} if meta.get("uid") else {}),
            },
            "type": "Warning",
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "trainguard"},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            retry(lambda: self.api.create("Event", meta["namespace"], body), attempts=4)
        except ApiError as error:
            log.warning("could not post Event %s: %s", reason, error)

    def _cut(self, order: Order, pod: str, ip: str) -> sensorproto.CutReport | None:
        command = sensorproto.CutCommand(
            pod=pod,
            nonce=secrets.token_hex(16),
            issued_at=time.time(),
            keep=list(order.keep),
            pids=sorted(_pids(order)),
            signal="KILL" if self.settings.signal == "KILL" else "STOP",
        )
        body = command.model_dump_json(by_alias=True).encode()
        headers = {
            "Authorization": "Bearer " + sensorproto.pod_credential(order.key, pod),
            sensorproto.SIGNATURE_HEADER: sensorproto.sign_command(order.key, body),
            "Content-Type": "application/json",
        }
        deadline = time.monotonic() + self.settings.cut_timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                conn = http.client.HTTPConnection(ip, self.settings.sensor_port, timeout=left)
                try:
                    conn.request("POST", sensorproto.CUT_PATH, body, headers)
                    response = conn.getresponse()
                    data = response.read(1 << 20)
                    signature = response.getheader(sensorproto.SIGNATURE_HEADER)
                finally:
                    conn.close()
            except OSError as error:
                log.info("cut of %s: %s", pod, error)
                time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
                continue
            if response.status != 200 or not sensorproto.report_ok(order.key, data, signature):
                log.warning(
                    "cut of %s: HTTP %s, report signature ok=%s",
                    pod,
                    response.status,
                    sensorproto.report_ok(order.key, data, signature),
                )
                return None
            report = sensorproto.CutReport.model_validate_json(data)
            if report.nonce != command.nonce or report.pod != pod:
                return None
            return report

    def _accepted(self, order: Order, outcome: str | None) -> None:
        """The API server accepted the action's first change: the latency is measured here."""
        self.metrics.latency.observe(max(0.0, time.time() - order.decision.violation.first_seen))
        if outcome is not None:
            self._count(order.job, order.decision.action, outcome)

    def _count(self, job: tuple[str, str], action: str, outcome: str) -> None:
        self.metrics.actions.labels(job[0], job[1], action, outcome).inc()


def _same_record(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in ("time", "pod", "rule", "action", "dryRun"))


def _violating(conditions: Sequence[Mapping[str, Any]], entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = [dict(c) for c in conditions if c.get("type") != "Violating"]
    previous = next((c for c in conditions if c.get("type") == "Violating"), None)
    transition = previous["lastTransitionTime"] if previous and previous.get("status") == "True" else now_iso()
    out.append(
        {
            "type": "Violating",
            "status": "True",
            "reason": "DryRun" if entry["dryRun"] else str(entry["action"]),
            "message": f"{entry['rule']} in pod {entry['pod']}",
            "lastTransitionTime": transition,
        }
    )
    return out


def _evidence(order: Order) -> str:
    d = order.decision
    v = d.violation
    doc = {
        "pod": v.pod,
        "occurrence": v.occurrence,
        "rule": v.rule,
        "severity": v.severity,
        "identity": v.identity,
        "action": d.action,
        "firstSeen": iso(v.first_seen),
        "evidence": dict(v.evidence),
        "remotes": list(order.remotes) or list(_remotes_of(v.evidence)),
    }
    return json.dumps(doc, sort_keys=True)[:16384]


_RANK = {"Alert": 0, "Quarantine": 1, "Suspend": 2, "Delete": 3}


def _rank(action: str) -> int:
    return _RANK.get(action, 0)


def _annotation(obj: Mapping[str, Any], key: str) -> str | None:
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(key)
    return str(value) if value else None


def _marked(pod: Mapping[str, Any]) -> Decision | None:
    """The decision a pod's evidence annotation records (a quarantine or delete under way), or None."""
    text = _annotation(pod, names.EVIDENCE_ANNOTATION)
    if text is None:
        return None
    meta = pod["metadata"]
    return _decision_from(text, f"{meta['namespace']}/{meta['name']}")


def _remotes_of(evidence: Mapping[str, Any]) -> tuple[str, ...]:
    remote = evidence.get("remote")
    return (str(remote),) if remote else ()


def _decision_from(text: str, pod: str) -> Decision:
    """A decision rebuilt from an evidence annotation (what this operator, or a previous run of it, wrote)."""
    try:
        doc = json.loads(text)
    except ValueError:
        doc = {}
    if not isinstance(doc, dict):
        doc = {}
    raw = doc.get("evidence")
    evidence: dict[str, Any] = raw if isinstance(raw, dict) else {}
    try:
        first = dt.datetime.fromisoformat(str(doc["firstSeen"]).replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError):
        first = time.time()
    action = cast(Action, doc["action"] if doc.get("action") in _RANK else "Quarantine")
    severity = cast(
        Severity, doc["severity"] if doc.get("severity") in ("Low", "Medium", "High", "Critical") else "High"
    )
    violation = Violation(
        rule=str(doc.get("rule", "sensor.identity")),
        severity=severity,
        pod=str(doc.get("pod") or pod),
        identity=str(doc.get("identity", "")),
        first_seen=first,
        last_seen=first,
        evidence=evidence,
        occurrence=int(doc.get("occurrence") or 0),
    )
    return Decision("new", violation, action, False, time.time())


def _pids(order: Order) -> set[int]:
    """The process the decision's evidence names (in the pod's pid namespace), if any."""
    pid = order.decision.violation.evidence.get("pid")
    return {pid} if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else set()


def _cut_mark(nonce: str, pids: set[int]) -> str:
    """The cut annotation: `confirmed <nonce of the last cut> pids=<stopped, comma-separated>`."""
    return f"confirmed {nonce} pids={','.join(str(p) for p in sorted(pids))}"


def _cut_pids(mark: str) -> set[int]:
    """The pids a cut annotation says were stopped (none for an older `confirmed <nonce>`, or garbage)."""
    for word in mark.split():
        if word.startswith("pids="):
            return {int(p) for p in word[5:].split(",") if p.isdigit()}
    return set()


def _has_condition(pod: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") == names.QUARANTINED_CONDITION and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def _pod_ip(pod: Mapping[str, Any]) -> str | None:
    ips = (pod.get("status") or {}).get("podIPs") or []
    if ips:
        return str(ips[0].get("ip"))
    ip = (pod.get("status") or {}).get("podIP")
    return str(ip) if ip else None
