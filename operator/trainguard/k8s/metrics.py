"""The operator's Prometheus metrics, in a registry of its own (served on /metrics by `trainguard run`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from trainguard import __version__
from trainguard.api import metrics as m


class OperatorMetrics:
    """Reconciles by outcome, their duration, the jobs watched, and the build."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.reconciles = Counter(
            "trainguard_reconciles",
            "Reconciles of AgentTrainingJobs, by outcome (reconciled, invalid, error, gone).",
            ["outcome"],
            registry=self.registry,
        )
        self.reconcile_duration = Histogram(
            "trainguard_reconcile_duration_seconds",
            "Seconds one reconcile of an AgentTrainingJob took.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )
        self.watched_jobs = Gauge(
            "trainguard_watched_jobs", "AgentTrainingJobs the operator currently knows of.", registry=self.registry
        )
        self.queue_depth = Gauge(
            "trainguard_reconcile_queue_depth", "Jobs waiting for, or in, a reconcile.", registry=self.registry
        )
        self.build_info = Info("trainguard_build", "The running trainguard build.", registry=self.registry)
        self.build_info.info({"version": __version__})
        for outcome in ("reconciled", "invalid", "error", "gone"):
            self.reconciles.labels(outcome)
        self.enforcement = EnforcementMetrics(self.registry)


class EnforcementMetrics:
    """Issue 13's families, built from their specs in `trainguard.api.metrics` (the chart's alerts query them)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.violations = Counter(
            m.VIOLATIONS.name.removesuffix("_total"), m.VIOLATIONS.help, m.VIOLATIONS.labels, registry=registry
        )
        self.actions = Counter(
            m.ENFORCEMENT_ACTIONS.name.removesuffix("_total"),
            m.ENFORCEMENT_ACTIONS.help,
            m.ENFORCEMENT_ACTIONS.labels,
            registry=registry,
        )
        self.quarantined = Gauge(
            m.QUARANTINED_PODS.name, m.QUARANTINED_PODS.help, m.QUARANTINED_PODS.labels, registry=registry
        )
        self.monitored = Gauge(m.MONITORED_PODS.name, m.MONITORED_PODS.help, registry=registry)
        self.streams = Gauge(m.SENSOR_STREAMS.name, m.SENSOR_STREAMS.help, m.SENSOR_STREAMS.labels, registry=registry)
        for state in m.SENSOR_STREAM_STATES:
            self.streams.labels(state).set(0)
        self.dcgm_queries = Counter(
            m.DCGM_QUERIES.name.removesuffix("_total"), m.DCGM_QUERIES.help, m.DCGM_QUERIES.labels, registry=registry
        )
        for outcome in m.DCGM_QUERY_OUTCOMES:
            self.dcgm_queries.labels(outcome)
        self.dcgm_unavailable = Gauge(m.DCGM_UNAVAILABLE_JOBS.name, m.DCGM_UNAVAILABLE_JOBS.help, registry=registry)
        self.latency = Histogram(
            m.DETECTION_TO_ENFORCEMENT.name,
            m.DETECTION_TO_ENFORCEMENT.help,
            buckets=m.DETECTION_TO_ENFORCEMENT.buckets,
            registry=registry,
        )
