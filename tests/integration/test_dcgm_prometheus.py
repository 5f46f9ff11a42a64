"""The DCGM source against a real Prometheus (Debian package `prometheus`, installed by `make tools`).

The test serves two small exporters on 127.0.0.1 with DCGM-named series (as dcgm-exporter writes
them with its Kubernetes mapping on: `namespace`, `pod`, `container`, `UUID`, `GPU_I_ID` for a MIG
instance), starts Prometheus on 127.0.0.1 with a temporary config scraping them every second, and
reads the pod's GPUs through `trainguard.sources.DcgmSource`. The second exporter is scraped with
target labels `namespace`/`pod` of its own, so Prometheus renames the exporter's to
`exported_namespace`/`exported_pod` (no `honor_labels`), as a cluster's scrape config often does.
Nothing listens beyond loopback; everything started is stopped and removed at the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import prometheus as promserver
from tests.integration.prometheus import exporter, free_port, series
from tests.polling import wait_for
from trainguard.api.sample import GpuProfile, Sample
from trainguard.sources import DcgmSource, GpuKey, PrometheusError, merge_dcgm

FULL = "GPU-5a1f0e2c-0100"
MIG_PARENT = "GPU-7b2e11d4-0000"
MIG_UUID = "MIG-4c9d0a61-1c0e-5b7a-9e3f-2a1b3c4d5e6f"
OTHER_POD_GPU = "GPU-5a1f0e2c-0200"


HASHING = {
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": 0.001,
    "DCGM_FI_PROF_DRAM_ACTIVE": 0.68,
    "DCGM_FI_PROF_PIPE_INT_ACTIVE": 0.61,
    "DCGM_FI_PROF_PIPE_FP16_ACTIVE": 0.0,
    "DCGM_FI_PROF_PIPE_FP32_ACTIVE": 0.02,
    "DCGM_FI_PROF_PIPE_FP64_ACTIVE": 0.0,
    "DCGM_FI_PROF_SM_ACTIVE": 0.97,
    "DCGM_FI_PROF_SM_OCCUPANCY": 0.64,
    "DCGM_FI_DEV_GPU_UTIL": 99,
    "DCGM_FI_DEV_FB_USED": 4096,
    "DCGM_FI_DEV_POWER_USAGE": 651.5,
}
#: A MIG instance: no whole-GPU utilization, no integer pipe counters on this SKU.
MIG = {
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": 0.42,
    "DCGM_FI_PROF_DRAM_ACTIVE": 0.31,
    "DCGM_FI_PROF_PIPE_FP16_ACTIVE": 0.11,
    "DCGM_FI_PROF_PIPE_FP32_ACTIVE": 0.14,
    "DCGM_FI_PROF_PIPE_FP64_ACTIVE": 0.0,
    "DCGM_FI_PROF_SM_ACTIVE": 0.88,
    "DCGM_FI_PROF_SM_OCCUPANCY": 0.4,
    "DCGM_FI_DEV_FB_USED": 9000,
}


def exporter_a() -> str:
    base = {"gpu": "0", "device": "nvidia0", "modelName": "NVIDIA H100 80GB HBM3", "Hostname": "node-a"}
    mine = {**base, "UUID": FULL, "container": "trainer", "namespace": "agents", "pod": "rl-trainer-worker-1"}
    other = {**base, "gpu": "1", "UUID": OTHER_POD_GPU, "container": "trainer", "namespace": "agents", "pod": "other"}
    return (
        "# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).\n# TYPE DCGM_FI_DEV_GPU_UTIL gauge\n"
        + series(mine, HASHING)
        + series(other, {"DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": 0.5, "DCGM_FI_DEV_GPU_UTIL": 80})
        # An unrelated series of the same pod: not asked for.
        + series(mine, {"DCGM_FI_DEV_SM_CLOCK": 1980})
    )


def exporter_b() -> str:
    labels = {
        "gpu": "0",
        "UUID": MIG_PARENT,
        "GPU_I_ID": "3",
        "GPU_I_PROFILE": "3g.40gb",
        "device": "nvidia0",
        "Hostname": "node-b",
        "container": "trainer",
        "namespace": "agents",
        "pod": "rl-trainer-worker-1",
    }
    return series(labels, MIG)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[str]:
    with (
        exporter({"/a": exporter_a, "/b": exporter_b}) as target,
        promserver.prometheus(
            tmp_path,
            f"""
  - job_name: dcgm-a
    metrics_path: /a
    static_configs: [{{targets: ["{target}"]}}]
  - job_name: dcgm-b
    metrics_path: /b
    static_configs: [{{targets: ["{target}"], labels: {{namespace: monitoring, pod: dcgm-exporter-7xk2p}}}}]
""",
        ) as url,
    ):
        yield url


def test_the_pods_gpus_are_read_from_prometheus_by_labels_uuid_and_mig_instance(prometheus: str) -> None:
    source = DcgmSource(prometheus, timeout_s=2.0)
    gpus = wait_for(
        lambda: (g := source.read("agents", "rl-trainer-worker-1")) and len(g) == 2 and g,
        30,
        "both of the pod's GPUs scraped",
        interval=0.5,
    )
    assert set(gpus) == {GpuKey(FULL), GpuKey(MIG_PARENT, 3)}  # not the other pod's GPU
    full = gpus[GpuKey(FULL)]
    assert full.profile == GpuProfile(
        tensor_active=0.001,
        dram_active=0.68,
        int_active=0.61,
        fp16_active=0.0,
        fp32_active=0.02,
        fp64_active=0.0,
        sm_active=0.97,
        sm_occupancy=0.64,
    )
    assert (full.utilization, full.memory_used_bytes, full.power_watts) == (0.99, 4096 << 20, 651.5)
    assert "DCGM_FI_DEV_SM_CLOCK" not in full.series
    # Matched through exported_namespace/exported_pod; no integer counters: null, not 0.
    mig = gpus[GpuKey(MIG_PARENT, 3)]
    assert mig.profile.int_active is None and mig.profile.tensor_active == 0.42
    assert mig.utilization is None and mig.memory_used_bytes == 9000 << 20

    sample = Sample.model_validate(
        {
            "ts": 1.0,
            "pod": "agents/rl-trainer-worker-1",
            "seq": 1,
            "gpus": [
                {"index": 0, "uuid": FULL, "utilization": 1.0, "profile": {"tensorActive": 0.9, "fp64Active": 0.3}},
                {"index": 1, "uuid": MIG_UUID},
                {"index": 2, "uuid": "GPU-not-in-dcgm", "utilization": 0.5},
            ],
        }
    )
    merged = merge_dcgm(sample, gpus, mig={MIG_UUID: GpuKey(MIG_PARENT, 3)})
    g0, g1, g2 = merged.gpus
    # DCGM (the node's word) wins over the sensor's where both speak; the sensor fills the rest.
    assert g0.profile is not None and g0.profile.tensor_active == 0.001 and g0.profile.fp64_active == 0.0
    assert g0.utilization == 1.0  # the sensor had a reading: kept
    assert g1.profile == mig.profile and g1.memory_used_bytes == 9000 << 20
    assert g2 == sample.gpus[2]

    assert source.read("agents", "nobody") == {}
    # One query for several pods (a POST; a name with a dot is matched literally): what the guard asks per job.
    by_pod = source.read_pods("agents", ["rl-trainer-worker-1", "other", "no.such-pod", "rl-trainer-worker-1x"])
    assert set(by_pod) == {"rl-trainer-worker-1", "other"}
    assert by_pod["rl-trainer-worker-1"] == gpus
    assert set(by_pod["other"]) == {GpuKey(OTHER_POD_GPU)}
    assert source.read_pods("agents", ["rl-trainer-worker.1"]) == {}  # the dot is not "any character"


def test_prometheus_errors_say_what_and_where(prometheus: str) -> None:
    with pytest.raises(ValueError, match="not a Kubernetes name"):
        DcgmSource(prometheus).read("agents", 'x"} or up{')
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(PrometheusError, match=f"Prometheus at {dead}: .*refused"):
        DcgmSource(dead, timeout_s=1.0).read("agents", "p")
    with pytest.raises(PrometheusError, match="HTTP 404"):
        DcgmSource(f"{prometheus}/nothing-here").read("agents", "p")
