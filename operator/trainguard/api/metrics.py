"""The operator's `/metrics`: every series it exports, named once.

This module is the contract between the operator (which registers these collectors), the Helm chart's alerting
rules and the Grafana dashboard (which query them); `tests/unit/test_observability.py` checks that every PromQL
expression shipped names a metric listed here or one the sensor really exports, and that each label matcher names
a label and, where the set is closed, a value listed here.

The operator builds its collectors from these specs (`Counter(spec.name, spec.help, spec.labels)` and so on;
prometheus-client keeps a counter's `_total`), so a rename happens here or nowhere.

Label names follow issue 13. `namespace` and `job` are the AgentTrainingJob's, which collide with Prometheus'
own target labels: the chart's ServiceMonitor scrapes with `honorLabels: true` so that they keep their values
(without it they arrive as `exported_namespace` and `exported_job`). `docs/runbook.md` says so for users who
write their own scrape configuration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from trainguard.api.v1alpha1 import Action, Severity

MetricKind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class MetricSpec:
    """One metric family as Prometheus sees it."""

    #: The family's name as exported (a counter's ends in `_total`).
    name: str
    kind: MetricKind
    #: The HELP line.
    help: str
    #: Label names, in order.
    labels: tuple[str, ...] = ()
    #: For labels whose values form a closed set: the values. Open labels (names, namespaces) are absent.
    values: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Histogram buckets, in seconds.
    buckets: tuple[float, ...] = ()

    def series(self) -> tuple[str, ...]:
        """The names of the sample series this family exposes (a histogram's `_bucket`, `_sum`, `_count`)."""
        if self.kind == "histogram":
            return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")
        return (self.name,)


SEVERITIES: tuple[Severity, ...] = ("Low", "Medium", "High", "Critical")
ACTIONS: tuple[Action, ...] = ("Alert", "Quarantine", "Suspend", "Delete")

#: `outcome` of an enforcement action: `applied` (the API server accepted it; for a Quarantine, the sensor also
#: confirmed the cut), `unconfirmed` (a Quarantine whose cut the sensor did not confirm within its bound: the
#: operator escalates to Delete), `failed` (the API server refused it or could not be reached after the retries),
#: `dry-run` (decided and recorded, nothing changed).
ENFORCEMENT_OUTCOMES = ("applied", "unconfirmed", "failed", "dry-run")

#: `state` of a sensor stream: `streaming` (authenticated samples arriving), `connecting` (a connection is being
#: opened), `backoff` (waiting before the next attempt after a failure).
SENSOR_STREAM_STATES = ("streaming", "connecting", "backoff")

#: `outcome` of a reconcile: `reconciled` (desired state applied, status written), `invalid` (the spec cannot be
#: reconciled as written: `Ready=False` until it is fixed), `error` (an exception: retried), `gone` (deleted meanwhile).
RECONCILE_OUTCOMES = ("reconciled", "invalid", "error", "gone")

RECONCILES = MetricSpec(
    "trainguard_reconciles_total", "counter", "Reconciles of AgentTrainingJobs, by outcome.",
    ("outcome",), {"outcome": RECONCILE_OUTCOMES},
)
RECONCILE_DURATION = MetricSpec(
    "trainguard_reconcile_duration_seconds", "histogram", "Seconds one reconcile of an AgentTrainingJob took.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
WATCHED_JOBS = MetricSpec("trainguard_watched_jobs", "gauge", "AgentTrainingJobs the operator currently knows of.")
RECONCILE_QUEUE_DEPTH = MetricSpec(
    "trainguard_reconcile_queue_depth", "gauge", "Jobs waiting for, or in, a reconcile."
)
#: prometheus-client's `Info("trainguard_build", ...)` exports this family (value 1, the build in its labels).
BUILD_INFO = MetricSpec("trainguard_build_info", "gauge", "The running trainguard build.", ("version",))
VIOLATIONS = MetricSpec(
    "trainguard_violations_total", "counter", "Violations found, by job, rule and severity.",
    ("namespace", "job", "rule", "severity"), {"severity": SEVERITIES},
)
ENFORCEMENT_ACTIONS = MetricSpec(
    "trainguard_enforcement_actions_total", "counter", "Enforcement actions taken, by job, action and outcome.",
    ("namespace", "job", "action", "outcome"), {"action": ACTIONS, "outcome": ENFORCEMENT_OUTCOMES},
)
QUARANTINED_PODS = MetricSpec(
    "trainguard_quarantined_pods", "gauge", "Pods labelled trainguard.io/quarantined now.", ("namespace",)
)
MONITORED_PODS = MetricSpec("trainguard_monitored_pods", "gauge", "Running pods of guarded jobs the operator watches.")
SENSOR_STREAMS = MetricSpec(
    "trainguard_sensor_streams", "gauge", "Sensor streams the collector holds, by state.",
    ("state",), {"state": SENSOR_STREAM_STATES},
)
#: `outcome` of a query of DCGM series to a job's Prometheus: `ok` (an instant vector came back), `failed`
#: (refused, timed out, an HTTP error, not an instant vector).
DCGM_QUERY_OUTCOMES = ("ok", "failed")
DCGM_QUERIES = MetricSpec(
    "trainguard_dcgm_queries_total", "counter", "Queries of DCGM series to guarded jobs' Prometheus, by outcome.",
    ("outcome",), {"outcome": DCGM_QUERY_OUTCOMES},
)
DCGM_UNAVAILABLE_JOBS = MetricSpec(
    "trainguard_dcgm_unavailable_jobs", "gauge",
    "Guarded jobs with spec.monitoring.prometheus whose last DCGM query failed (detection uses the sensor alone).",
)
DETECTION_TO_ENFORCEMENT = MetricSpec(
    "trainguard_detection_to_enforcement_seconds", "histogram",
    "From the first violating sample's timestamp to the API server accepting the action.",
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0),
)

#: Every family the operator exports, besides prometheus-client's own process and platform collectors.
OPERATOR: tuple[MetricSpec, ...] = (
    RECONCILES,
    RECONCILE_DURATION,
    WATCHED_JOBS,
    RECONCILE_QUEUE_DEPTH,
    BUILD_INFO,
    VIOLATIONS,
    ENFORCEMENT_ACTIONS,
    QUARANTINED_PODS,
    MONITORED_PODS,
    SENSOR_STREAMS,
    DETECTION_TO_ENFORCEMENT,
    DCGM_QUERIES,
    DCGM_UNAVAILABLE_JOBS,
)

#: The port of the operator's `/metrics` (the chart's Service, NetworkPolicy and probes use it).
OPERATOR_METRICS_PORT = 8080
