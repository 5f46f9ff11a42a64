"""`/metrics`: the latest sample in Prometheus terms, read at scrape time.

Everything lives in the sensor's own `CollectorRegistry` (never the global one). Gauges come from a
collector that reads the latest sample when scraped, so a GPU that disappeared simply has no series
any more; counters and the duration histogram are updated by the sampling loop. Base units, and no
per-pid labels: the set of label values is bounded by GPUs, protocols, TCP states and error kinds.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from trainguard.api.sample import GpuProfile, Sample
from trainguard.sensor.errors import SensorError, SensorErrorKind
from trainguard.sensor.sockets import TABLES, TCP_STATES

PREFIX = "trainguard_sensor"
_CONNECTION_STATES = frozenset(TCP_STATES.values())


def pipe_activity(p: GpuProfile) -> tuple[tuple[str, float | None], ...]:
    """The `pipe` label values of a profile and their activity."""
    return (
        ("tensor", p.tensor_active),
        ("dram", p.dram_active),
        ("int", p.int_active),
        ("fp16", p.fp16_active),
        ("fp32", p.fp32_active),
        ("fp64", p.fp64_active),
        ("sm", p.sm_active),
    )


class LatestSampleCollector(Collector):
    """Gauges of the latest sample: per GPU, and counts of processes and sockets."""

    def __init__(self, latest: Callable[[], Sample | None], stream_clients: Callable[[], int]) -> None:
        self._latest = latest
        self._stream_clients = stream_clients

    def collect(self) -> Iterable[Metric]:
        sample = self._latest()
        gpu_labels = ["gpu", "uuid"]
        utilization = GaugeMetricFamily(
            f"{PREFIX}_gpu_utilization_ratio",
            "NVML utilization.gpu: share of time a kernel was running, 0 to 1.",
            labels=gpu_labels,
        )
        memory_used = GaugeMetricFamily(
            f"{PREFIX}_gpu_memory_used_bytes", "Framebuffer memory in use on the GPU.", labels=gpu_labels
        )
        memory_total = GaugeMetricFamily(
            f"{PREFIX}_gpu_memory_total_bytes", "Framebuffer memory of the GPU.", labels=gpu_labels
        )
        power = GaugeMetricFamily(f"{PREFIX}_gpu_power_watts", "Power draw of the GPU.", labels=gpu_labels)
        clock = GaugeMetricFamily(f"{PREFIX}_gpu_sm_clock_hertz", "SM clock of the GPU.", labels=gpu_labels)
        pipes = GaugeMetricFamily(
            f"{PREFIX}_gpu_pipe_active_ratio",
            "What the GPU's kernels computed (its profile, NVML GPM): the share of time each pipe was active, 0 to 1 "
            "(pipe: tensor, dram, int, fp16, fp32, fp64, sm). No series where the GPU does not report it.",
            labels=[*gpu_labels, "pipe"],
        )
        occupancy = GaugeMetricFamily(
            f"{PREFIX}_gpu_sm_occupancy_ratio",
            "Resident warps as a share of the SMs' maximum (the GPU's profile, NVML GPM), 0 to 1.",
            labels=gpu_labels,
        )
        gpu_processes = GaugeMetricFamily(
            f"{PREFIX}_gpu_processes", "Compute processes on the GPU (any pod).", labels=gpu_labels
        )
        unattributed = GaugeMetricFamily(
            f"{PREFIX}_gpu_unattributed_processes",
            "Compute processes on the GPU that could not be tied to a process of this pod.",
            labels=gpu_labels,
        )
        processes = GaugeMetricFamily(f"{PREFIX}_processes", "Processes visible in the pod.")
        listening = GaugeMetricFamily(f"{PREFIX}_listening_sockets", "Listening sockets in the pod.", labels=["proto"])
        connections = GaugeMetricFamily(
            f"{PREFIX}_connections", "Sockets with a remote peer in the pod.", labels=["proto", "state"]
        )
        unconnected = GaugeMetricFamily(
            f"{PREFIX}_unconnected_sockets",
            "Sockets that can send without a peer (UDP, raw, ICMP echo, packet) in the pod.",
            labels=["proto"],
        )
        clients = GaugeMetricFamily(f"{PREFIX}_stream_clients", "Readers of /v1/samples now.")
        clients.add_metric([], self._stream_clients())
        if sample is None:
            yield clients
            return
        for gpu in sample.gpus:
            labels = [str(gpu.index), gpu.uuid]
            # A reading NVML could not take is null in the sample and absent here (never a 0).
            if gpu.utilization is not None:
                utilization.add_metric(labels, gpu.utilization)
            if gpu.memory_used_bytes is not None:
                memory_used.add_metric(labels, gpu.memory_used_bytes)
            if gpu.memory_total_bytes is not None:
                memory_total.add_metric(labels, gpu.memory_total_bytes)
            if gpu.power_watts is not None:
                power.add_metric(labels, gpu.power_watts)
            if gpu.sm_clock_mhz is not None:
                clock.add_metric(labels, gpu.sm_clock_mhz * 1e6)
            if gpu.profile is not None:
                for pipe, active in pipe_activity(gpu.profile):
                    if active is not None:
                        pipes.add_metric([*labels, pipe], active)
                if gpu.profile.sm_occupancy is not None:
                    occupancy.add_metric(labels, gpu.profile.sm_occupancy)
            gpu_processes.add_metric(labels, len(gpu.processes))
            unattributed.add_metric(labels, sum(1 for p in gpu.processes if not p.name))
        processes.add_metric([], len(sample.processes))
        by_proto: Tally[str] = Tally(s.proto for s in sample.listening)
        for proto in ("tcp", "tcp6", "sctp", "sctp6"):
            listening.add_metric([proto], by_proto.get(proto, 0))
        by_kind: Tally[str] = Tally(s.proto for s in sample.unconnected)
        for proto in (*TABLES, "packet"):
            if proto not in ("tcp", "tcp6"):
                unconnected.add_metric([proto], by_kind.get(proto, 0))
        by_state = Tally((c.proto, c.state if c.state in _CONNECTION_STATES else "OTHER") for c in sample.connections)
        for (proto, state), count in sorted(by_state.items()):
            connections.add_metric([proto, state], count)
        yield from (utilization, memory_used, memory_total, power, clock, pipes, occupancy, gpu_processes, unattributed)
        yield from (processes, listening, connections, unconnected, clients)


class SensorMetrics:
    """The sensor's registry, and what the sampling loop updates."""

    def __init__(self, latest: Callable[[], Sample | None], stream_clients: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        self.sample_duration = Histogram(
            f"{PREFIX}_sample_duration_seconds",
            "Wall time to build one sample (collection, waiting at most the deadline).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.samples = Counter(f"{PREFIX}_samples", "Samples emitted.", registry=self.registry)
        self.errors = Counter(
            f"{PREFIX}_errors", "Errors reported in samples, by kind.", ["kind"], registry=self.registry
        )
        for kind in SensorErrorKind:  # the set is closed: show every kind from the start, at 0
            self.errors.labels(kind.value)
        self.stream_dropped = Counter(
            f"{PREFIX}_stream_dropped_lines",
            "Samples dropped for stream readers that fell behind.",
            registry=self.registry,
        )
        self.cuts = Counter(
            f"{PREFIX}_cuts",
            "Cut commands, by outcome: confirmed, unconfirmed (something stayed open or failed), refused (stale, "
            "replayed, another pod's), forged (bad signature).",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in ("confirmed", "unconfirmed", "refused", "forged"):
            self.cuts.labels(outcome)
        self.registry.register(LatestSampleCollector(latest, stream_clients))

    def observe(self, errors: list[SensorError], seconds: float) -> None:
        """Account for one emitted sample."""
        self.samples.inc()
        self.sample_duration.observe(seconds)
        for kind, count in Tally(e.kind for e in errors).items():
            self.errors.labels(kind.value).inc(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)
