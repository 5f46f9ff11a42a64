from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from trainguard.api.sample import (
    Connection,
    Endpoint,
    GpuProcess,
    GpuProfile,
    GpuSample,
    ListeningSocket,
    Sample,
    UnconnectedSocket,
)
from trainguard.sensor.errors import SensorErrorKind, error
from trainguard.sensor.metrics import SensorMetrics


def _ep(address: str, port: int) -> Endpoint:
    return Endpoint(address=address, port=port)


def parse(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_metrics_follow_the_latest_sample() -> None:
    two_gpus = Sample(
        ts=1,
        pod="a/b",
        seq=0,
        gpus=[
            GpuSample(
                index=0,
                uuid="GPU-a",
                utilization=0.97,
                memory_used_bytes=5,
                power_watts=300,
                sm_clock_mhz=1980,
                processes=[GpuProcess(pid=1, name="python"), GpuProcess(pid=2)],
            ),
            GpuSample(index=1, uuid="GPU-b"),  # every reading null (NVML could not take them)
        ],
        listening=[ListeningSocket(proto="tcp", local=Endpoint(address="0.0.0.0", port=22), pid=3)],
        unconnected=[UnconnectedSocket(proto="raw", local=Endpoint(address="0.0.0.0"))],
        connections=[
            Connection(proto="tcp", local=_ep("10.0.0.1", 1), remote=_ep("10.0.0.2", 22), state="ESTABLISHED"),
            Connection(proto="tcp", local=_ep("10.0.0.1", 2), remote=_ep("10.0.0.2", 22), state="ESTABLISHED"),
            Connection(proto="udp", local=_ep("10.0.0.1", 3), remote=_ep("10.0.0.2", 53), state="ESTABLISHED"),
        ],
    )
    latest = [two_gpus]
    metrics = SensorMetrics(lambda: latest[0], lambda: 3)
    metrics.observe([error(SensorErrorKind.PROC_READ, "x"), error(SensorErrorKind.PROC_READ, "y")], 0.004)
    seen = parse(metrics.render())
    gpu0 = (("gpu", "0"), ("uuid", "GPU-a"))
    assert seen[("trainguard_sensor_gpu_utilization_ratio", gpu0)] == 0.97
    assert seen[("trainguard_sensor_gpu_memory_used_bytes", gpu0)] == 5
    assert seen[("trainguard_sensor_gpu_power_watts", gpu0)] == 300
    assert seen[("trainguard_sensor_gpu_sm_clock_hertz", gpu0)] == 1.98e9
    assert seen[("trainguard_sensor_gpu_processes", gpu0)] == 2
    assert seen[("trainguard_sensor_gpu_unattributed_processes", gpu0)] == 1
    assert seen[("trainguard_sensor_listening_sockets", (("proto", "tcp"),))] == 1
    assert seen[("trainguard_sensor_unconnected_sockets", (("proto", "raw"),))] == 1
    assert seen[("trainguard_sensor_unconnected_sockets", (("proto", "udp"),))] == 0
    assert seen[("trainguard_sensor_connections", (("proto", "tcp"), ("state", "ESTABLISHED")))] == 2
    assert seen[("trainguard_sensor_connections", (("proto", "udp"), ("state", "ESTABLISHED")))] == 1
    assert seen[("trainguard_sensor_errors_total", (("kind", "proc_read"),))] == 2
    assert seen[("trainguard_sensor_errors_total", (("kind", "gpu_stale"),))] == 0
    assert seen[("trainguard_sensor_sample_duration_seconds_count", ())] == 1
    assert seen[("trainguard_sensor_stream_clients", ())] == 3
    assert not any("pid" in dict(labels) for _, labels in seen)
    gpu1 = (("gpu", "1"), ("uuid", "GPU-b"))
    assert ("trainguard_sensor_gpu_utilization_ratio", gpu1) not in seen  # null is absent, never 0

    latest[0] = two_gpus.model_copy(update={"gpus": two_gpus.gpus[:1]})  # GPU 1 went away
    after = parse(metrics.render())
    assert not any(dict(labels).get("uuid") == "GPU-b" for _, labels in after)
    assert any(dict(labels).get("uuid") == "GPU-a" for _, labels in after)


def test_before_the_first_sample_only_sensor_metrics() -> None:
    seen = parse(SensorMetrics(lambda: None, lambda: 0).render())
    assert not any(name.startswith("trainguard_sensor_gpu") for name, _ in seen)
    assert seen[("trainguard_sensor_samples_total", ())] == 0


def test_the_gpu_profile_is_a_gauge_per_pipe_and_absent_where_unknown() -> None:
    s = Sample(
        ts=1,
        pod="a/b",
        seq=0,
        gpus=[
            GpuSample(
                index=0,
                uuid="GPU-a",
                profile=GpuProfile(tensor_active=0.5, int_active=None, fp32_active=0.1, sm_occupancy=0.4),
            ),
            GpuSample(index=1, uuid="GPU-b"),  # no GPM: no series at all
        ],
    )
    seen = parse(SensorMetrics(lambda: s, lambda: 0).render())
    pipes = {
        dict(labels)["pipe"]: v
        for (name, labels), v in seen.items()
        if name == "trainguard_sensor_gpu_pipe_active_ratio"
    }
    assert pipes == {"tensor": 0.5, "fp32": 0.1}
    assert all(dict(labels)["gpu"] == "0" for (n, labels) in seen if n.startswith("trainguard_sensor_gpu_pipe"))
    assert seen[("trainguard_sensor_gpu_sm_occupancy_ratio", (("gpu", "0"), ("uuid", "GPU-a")))] == 0.4
    assert not [k for k in seen if k[0] == "trainguard_sensor_gpu_sm_occupancy_ratio" and ("gpu", "1") in k[1]]
