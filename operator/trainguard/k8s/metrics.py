"""The operator's Prometheus metrics, in a registry of its own (served on /metrics by `trainguard run`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from trainguard import __version__


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
