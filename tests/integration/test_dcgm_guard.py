"""The operator's guard with DCGM (issue 14) on KWOK: a job whose `spec.monitoring.prometheus` names a real
Prometheus (Debian package `prometheus`) scraping a small exporter of DCGM-named series for the job's pods, each
pod's sensor played by tests/sensorplay.py on the pod's own 127.x address, the operator as `trainguard run` in its
own process. The sensor's samples carry a busy GPU and no profile (benign on their own); DCGM shows what the kernels
compute. Nothing leaves loopback.

The played sensors send four samples a second so that the mining signature's 60-sample window fills in 15 s (the
engine counts samples, not seconds); the operator asks Prometheus every second (`--dcgm-interval=1`)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import KwokCluster
from tests.integration.prometheus import exporter, free_port, prometheus, series
from tests.integration.test_enforcement import QUARANTINED, Rig, _metric, _violations
from tests.polling import wait_for

pytestmark = pytest.mark.integration

GIB = 1 << 30
MINING = "gpu.mining-signature"
#: What dcgm-exporter reports of a GPU running a hash loop: integer and memory-bound, tensor and FP pipes idle, busy.
HASHING = {
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": 0.0,
    "DCGM_FI_PROF_DRAM_ACTIVE": 0.71,
    "DCGM_FI_PROF_PIPE_INT_ACTIVE": 0.64,
    "DCGM_FI_PROF_PIPE_FP16_ACTIVE": 0.0,
    "DCGM_FI_PROF_PIPE_FP32_ACTIVE": 0.01,
    "DCGM_FI_PROF_PIPE_FP64_ACTIVE": 0.0,
    "DCGM_FI_PROF_SM_ACTIVE": 0.97,
    "DCGM_FI_PROF_SM_OCCUPANCY": 0.62,
    "DCGM_FI_DEV_GPU_UTIL": 99,
    "DCGM_FI_DEV_FB_USED": 49152,
    "DCGM_FI_DEV_POWER_USAGE": 640.0,
}
#: ... and of one training a transformer: matrix multiplies on the tensor cores, FP16 and FP32 beside them.
TRAINING = {
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": 0.58,
    "DCGM_FI_PROF_DRAM_ACTIVE": 0.46,
    "DCGM_FI_PROF_PIPE_INT_ACTIVE": 0.08,
    "DCGM_FI_PROF_PIPE_FP16_ACTIVE": 0.31,
    "DCGM_FI_PROF_PIPE_FP32_ACTIVE": 0.22,
    "DCGM_FI_PROF_PIPE_FP64_ACTIVE": 0.0,
    "DCGM_FI_PROF_SM_ACTIVE": 0.91,
    "DCGM_FI_PROF_SM_OCCUPANCY": 0.45,
    "DCGM_FI_DEV_GPU_UTIL": 96,
    "DCGM_FI_DEV_FB_USED": 49152,
    "DCGM_FI_DEV_POWER_USAGE": 610.0,
}


def sensor_gpu(uuid: str) -> list[dict[str, Any]]:
    """What the pod's sensor says: one busy GPU, much of its memory used, one python process, no profile (no GPM)."""
    return [
        {
            "index": 0,
            "uuid": uuid,
            "utilization": 0.97,
            "memoryUsedBytes": 48 * GIB,
            "memoryTotalBytes": 80 * GIB,
            "powerWatts": 600.0,
            "processes": [{"pid": 7, "name": "python3", "exe": "/usr/bin/python3", "exeStatus": "ok"}],
        }
    ]


class Exporter:
    """dcgm-exporter's page for the node: per pod, its GPU's UUID and series (filled once the pods exist)."""

    def __init__(self) -> None:
        self.gpus: dict[str, tuple[str, dict[str, float]]] = {}
        self.namespace = ""
        self._lock = threading.Lock()

    def set(self, pod: str, uuid: str, values: dict[str, float]) -> None:
        with self._lock:
            self.gpus[pod] = (uuid, values)

    def page(self) -> str:
        with self._lock:
            items = list(self.gpus.items())
        out = []
        for gpu, (pod, (uuid, values)) in enumerate(items):
            labels = {
                "gpu": str(gpu),
                "UUID": uuid,
                "device": f"nvidia{gpu}",
                "modelName": "NVIDIA H100 80GB HBM3",
                "Hostname": "kwok-0",
                "container": "trainer",
                "namespace": self.namespace,
                "pod": pod.split("/")[1],
            }
            out.append(series(labels, values))
        return "".join(out)


class DcgmRig(Rig):
    def __init__(self, cluster: KwokCluster, namespace: str, tmp_path: Path, prometheus_url: str) -> None:
        super().__init__(cluster, namespace, tmp_path, interval_s=0.25)
        self.prometheus_url = prometheus_url

    def operator_args(self) -> list[str]:
        return [*super().operator_args(), "--dcgm-interval=1", "--dcgm-max-age=5", "--dcgm-timeout=2"]

    def body(self, action: str, replicas: int, dry_run: bool, enforcement: dict[str, Any]) -> dict[str, Any]:
        body = super().body(action, replicas, dry_run, enforcement)
        body["spec"]["monitoring"] = {"prometheus": {"url": self.prometheus_url}}
        return body


@pytest.fixture
def dcgm_exporter() -> Exporter:
    return Exporter()


@pytest.fixture
def prometheus_url(tmp_path: Path, dcgm_exporter: Exporter) -> Iterator[str]:
    with (
        exporter({"/metrics": dcgm_exporter.page}) as target,
        prometheus(tmp_path, f'  - job_name: dcgm\n    static_configs: [{{targets: ["{target}"]}}]\n') as url,
    ):
        yield url


def _condition(rig: Rig, kind: str) -> dict[str, Any] | None:
    for c in (rig.atj().get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return dict(c)
    return None


def test_dcgm_showing_a_miner_behind_a_benign_sensor_reading_is_quarantined(
    kwok_cluster: KwokCluster, kwok_namespace: str, tmp_path: Path, prometheus_url: str, dcgm_exporter: Exporter
) -> None:
    rig = DcgmRig(kwok_cluster, kwok_namespace, tmp_path, prometheus_url)
    dcgm_exporter.namespace = kwok_namespace
    try:
        rig.create("Quarantine")
        with rig.operator() as running:
            bad, good = rig.play(2)
            for pod, uuid, values in ((bad, "GPU-8f3a-0001", HASHING), (good, "GPU-8f3a-0002", TRAINING)):
                rig.player.set_gpus(pod, sensor_gpu(uuid))
                dcgm_exporter.set(pod, uuid, values)
            rig.streaming(2)

            def quarantined() -> dict[str, Any] | None:
                p = rig.pod(bad)
                labels = (p.metadata.labels or {}) if p is not None else {}
                return (
                    json.loads(p.metadata.annotations["trainguard.io/evidence"])
                    if p and QUARANTINED in labels
                    else None
                )

            evidence = wait_for(quarantined, 60, "the pod DCGM shows hashing was not quarantined")
            assert evidence["rule"] == MINING and evidence["action"] == "Quarantine"
            assert evidence["evidence"]["basis"] == "profile"  # judged by what the kernels computed, from DCGM
            assert evidence["evidence"]["tensorActive"] == 0.0 and evidence["evidence"]["intActive"] == 0.64
            # The label (with the evidence) is the quarantine's first write, the status record its second.
            [record] = wait_for(lambda: _violations(rig, MINING), 20, "the violation was not recorded in status")
            assert record["pod"] == bad.split("/")[1] and record["action"] == "Quarantine"
            neighbour = rig.pod(good)
            assert neighbour is not None and QUARANTINED not in (neighbour.metadata.labels or {})
            assert _metric(running, "trainguard_dcgm_queries_total", outcome="ok") >= 1
            assert _metric(running, "trainguard_dcgm_unavailable_jobs") == 0
            degraded = _condition(rig, "Degraded")
            assert degraded is not None and degraded["status"] == "False", degraded
    finally:
        rig.player.stop()


def test_prometheus_unreachable_degrades_the_job_once_the_sensor_alone_still_detects_and_it_clears(
    kwok_cluster: KwokCluster, kwok_namespace: str, tmp_path: Path, dcgm_exporter: Exporter
) -> None:
    port = free_port()
    dead = f"http://127.0.0.1:{port}"  # nothing listens there (until the end): every query is refused
    rig = DcgmRig(kwok_cluster, kwok_namespace, tmp_path, dead)
    try:
        rig.create("Alert")
        with rig.operator() as running:
            bad, good = rig.play(2)
            for pod, uuid in ((bad, "GPU-8f3a-0001"), (good, "GPU-8f3a-0002")):
                rig.player.set_gpus(pod, sensor_gpu(uuid))
            rig.streaming(2)

            def degraded() -> dict[str, Any] | None:
                c = _condition(rig, "Degraded")
                return c if c and c["status"] == "True" and c["reason"] == "PrometheusUnreachable" else None

            condition = wait_for(degraded, 30, "the job's Degraded condition did not name the unreachable Prometheus")
            assert dead in condition["message"] and "sensor" in condition["message"]
            wait_for(
                lambda: _metric(running, "trainguard_dcgm_queries_total", outcome="failed") >= 5,
                30,
                "the operator stopped asking",
            )
            assert _metric(running, "trainguard_dcgm_unavailable_jobs") == 1
            said = [e for e in rig.events(rig.name) if e.reason == "PrometheusUnreachable"]
            assert len(said) == 1, [e.message for e in said]  # once per outage, not once per query
            warned = [r for r in running.log_lines() if "DCGM readings of" in str(r.get("message", ""))]
            assert len(warned) == 1, warned
            # Detection from the sensor's own readings goes on.
            rig.player.set_mode(bad, "tunnel")
            wait_for(lambda: _violations(rig, "net.tunnel"), 20, "no net.tunnel violation with Prometheus down")
            # The window (60 samples) has been full for a while: the sensor's busy-but-memory-heavy GPU alone is no
            # miner, and nothing from DCGM made it one.
            wait_for(lambda: rig.player.pods[good].seq >= 90, 30, "the played sensor did not send 90 samples")
            assert not _violations(rig, MINING)
            assert running.alive()
            # Prometheus comes up at that address: the job is no longer degraded, and the operator says so once.
            dcgm_exporter.namespace = kwok_namespace
            dcgm_exporter.set(good, "GPU-8f3a-0002", TRAINING)
            with (
                exporter({"/metrics": dcgm_exporter.page}) as target,
                prometheus(
                    tmp_path, f'  - job_name: dcgm\n    static_configs: [{{targets: ["{target}"]}}]\n', port=port
                ),
            ):

                def recovered() -> dict[str, Any] | None:
                    c = _condition(rig, "Degraded")
                    return c if c and c["reason"] != "PrometheusUnreachable" else None

                wait_for(recovered, 30, "the job stayed Degraded/PrometheusUnreachable after Prometheus came back")
                assert _metric(running, "trainguard_dcgm_unavailable_jobs") == 0
                assert any("read again" in str(r.get("message", "")) for r in running.log_lines())
    finally:
        rig.player.stop()
