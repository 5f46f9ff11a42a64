from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from trainguard.api.sample import GpuProcess, GpuProfile, GpuSample, Sample
from trainguard.sensor.errors import SensorErrorKind
from trainguard.sensor.gpu import (
    GPM_METRICS,
    NvmlGpuSource,
    ReplayGpuSource,
    TraceEnd,
    TraceError,
    gpm_request,
    load_trace,
)

from .fakegpm import FakeGpm


class FakeNvmlError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


def hashing(handle: int, first: int, second: int) -> dict[int, float | None]:
    """A hash loop on the GPU (integer pipes and DRAM busy, tensor and FP idle); no integer counters on handle 2."""
    return {
        FakeGpm.NVML_GPM_METRIC_ANY_TENSOR_UTIL: 0.0,
        FakeGpm.NVML_GPM_METRIC_DRAM_BW_UTIL: 71.0,
        FakeGpm.NVML_GPM_METRIC_INTEGER_UTIL: None if handle == 2 else 64.5 + second - first,
        FakeGpm.NVML_GPM_METRIC_FP16_UTIL: 0.0,
        FakeGpm.NVML_GPM_METRIC_FP32_UTIL: 1.5,
        FakeGpm.NVML_GPM_METRIC_FP64_UTIL: 0.0,
        FakeGpm.NVML_GPM_METRIC_SM_UTIL: 99.0,
        FakeGpm.NVML_GPM_METRIC_SM_OCCUPANCY: 250.0,  # out of range: clamped to 1.0
    }


class FakeNvml(FakeGpm):
    """The slice of pynvml the source uses, with two GPUs; GPU 0 has GPM, GPU 1 (as a pre-Hopper board) not."""

    NVMLError = FakeNvmlError
    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_CLOCK_SM = 1

    def __init__(self, *, fail_init: int = 0, gpus: int = 2, gpm: frozenset[int] = frozenset({0})) -> None:
        super().__init__(set(gpm), hashing, FakeNvmlError)
        self.gpus = gpus
        self.fail_init = fail_init
        self.init_calls = 0
        self.shutdown_calls = 0

    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.fail_init:
            self.fail_init -= 1
            raise FakeNvmlError(12)

    def nvmlShutdown(self) -> None:
        self.shutdown_calls += 1

    def nvmlDeviceGetCount(self) -> int:
        return self.gpus

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetUUID(self, handle: int) -> bytes:
        return f"GPU-{handle}".encode()

    def nvmlDeviceGetMinorNumber(self, handle: int) -> int:
        return handle + 4

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        if handle == 1:  # as in MIG mode
            raise FakeNvmlError(self.NVML_ERROR_NOT_SUPPORTED)
        return SimpleNamespace(gpu=97, memory=10)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return SimpleNamespace(used=1 << 30, total=80 << 30)

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        if handle == 1:
            raise FakeNvmlError(self.NVML_ERROR_NOT_SUPPORTED)
        return 300_500

    def nvmlDeviceGetClockInfo(self, handle: int, clock: int) -> int:
        assert clock == self.NVML_CLOCK_SM
        if handle == 1:
            raise FakeNvmlError(15)  # a real failure, not "not supported"
        return 1980

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[Any]:
        return [SimpleNamespace(pid=4242, usedGpuMemory=5 << 20), SimpleNamespace(pid=4243, usedGpuMemory=None)]


def test_nvml_source_reads_every_field() -> None:
    source = NvmlGpuSource(FakeNvml())
    reading = source.read()
    gpu0, gpu1 = reading.gpus
    assert gpu0 == GpuSample(
        index=0,
        uuid="GPU-0",
        utilization=0.97,
        memory_used_bytes=1 << 30,
        memory_total_bytes=80 << 30,
        power_watts=300.5,
        sm_clock_mhz=1980,
        processes=[GpuProcess(pid=4242, used_memory_bytes=5 << 20), GpuProcess(pid=4243, used_memory_bytes=None)],
    )
    assert reading.minor_numbers == {0: 4, 1: 5}
    # Not supported (MIG mode, some boards): null, never 0.0, and said once; a real failure is said each time.
    assert (gpu1.utilization, gpu1.power_watts, gpu1.sm_clock_mhz) == (None, None, None)
    assert [(e.kind, e.message) for e in reading.errors] == [
        (SensorErrorKind.GPU_UNSUPPORTED, "GPU 1 utilization: not supported by this GPU (null)"),
        (SensorErrorKind.GPU_UNSUPPORTED, "GPU 1 power: not supported by this GPU (null)"),
        (SensorErrorKind.GPU_READ, "GPU 1 SM clock: NVML error 15"),
        (
            SensorErrorKind.GPU_UNSUPPORTED,
            "GPU 1 profile (GPM): not supported by this GPU or driver (Hopper or later); null",
        ),
    ]
    again = source.read()
    assert again.gpus[1].utilization is None
    assert again.gpus[1].profile is None
    assert again.gpus[0].profile is not None  # the second read has two GPM samples to compare
    assert [(e.kind, e.message) for e in again.errors] == [(SensorErrorKind.GPU_READ, "GPU 1 SM clock: NVML error 15")]


def test_gpm_profile_is_read_between_two_samples_in_0_to_1() -> None:
    nvml = FakeNvml()
    source = NvmlGpuSource(nvml)
    assert source.read().gpus[0].profile is None  # one GPM sample: nothing to compare yet
    second = source.read()
    assert second.gpus[0].profile == GpuProfile(
        tensor_active=0.0,
        dram_active=0.71,
        int_active=0.655,  # 64.5 + one tick between the two samples
        fp16_active=0.0,
        fp32_active=0.015,
        fp64_active=0.0,
        sm_active=0.99,
        sm_occupancy=1.0,
    )
    assert not [e for e in second.errors if "GPU 0" in e.message]
    source.close()
    assert nvml.samples and all(s.freed for s in nvml.samples)  # every GPM buffer given back


def test_gpm_metric_a_sku_lacks_is_null_and_said_once() -> None:
    nvml = FakeNvml(gpus=3, gpm=frozenset({0, 2}))
    source = NvmlGpuSource(nvml)
    source.read()
    second, third = source.read(), source.read()
    assert second.gpus[2].profile is not None and second.gpus[2].profile.int_active is None
    assert second.gpus[2].profile.dram_active == 0.71
    lacks = "GPU 2 profile NVML_GPM_METRIC_INTEGER_UTIL: not given (NVML 3); null"
    assert [e.message for e in second.errors if e.message.startswith("GPU 2")] == [lacks]
    assert [e.kind for e in second.errors if e.message == lacks] == [SensorErrorKind.GPU_UNSUPPORTED]
    assert not [e for e in third.errors if e.message.startswith("GPU 2")]


def test_a_failed_gpm_sample_is_an_error_and_the_next_profile_waits_for_two_fresh_samples() -> None:
    nvml = FakeNvml()
    source = NvmlGpuSource(nvml)
    source.read()
    nvml.fail_sample.add(0)
    failed = source.read()
    assert failed.gpus[0].profile is None
    assert [(e.kind, e.message) for e in failed.errors if "GPU 0" in e.message] == [
        (SensorErrorKind.GPU_READ, "GPU 0 profile (GPM) sample: NVML error 999")
    ]
    assert source.read().gpus[0].profile is None  # a fresh start: one sample
    assert source.read().gpus[0].profile is not None


def test_an_nvidia_ml_py_without_gpm_says_so_once() -> None:
    class OldNvml(FakeNvml):
        def __getattribute__(self, name: str) -> object:
            if name.startswith("nvmlGpm"):
                raise AttributeError(name)
            return super().__getattribute__(name)

    source = NvmlGpuSource(OldNvml(gpus=1))
    first = source.read()
    assert first.gpus[0].profile is None
    assert [e.message for e in first.errors] == ["GPU 0 profile (GPM): this nvidia-ml-py has no GPM API; null"]
    assert source.read().errors == []


def test_the_gpm_request_fits_real_pynvml_structures() -> None:
    # What the fake cannot check: the request is written into pynvml's own ctypes structure and
    # sample pointers without a type error (the call itself needs a driver: scripts/gpu-check.sh).
    older, newer = pynvml.c_nvmlGpmSample_t(), pynvml.c_nvmlGpmSample_t()
    get = gpm_request(pynvml, older, newer)
    assert isinstance(get, pynvml.c_nvmlGpmMetricsGet_t)
    assert get.numMetrics == len(GPM_METRICS) == 8
    assert [get.metrics[i].metricId for i in range(8)] == [getattr(pynvml, m) for _, m in GPM_METRICS]


def test_nvml_without_driver_reports_and_retries() -> None:
    now = [0.0]
    nvml = FakeNvml(fail_init=2)
    source = NvmlGpuSource(nvml, retry_s=10, clock=lambda: now[0])
    first = source.read()
    assert first.gpus == [] and [e.kind for e in first.errors] == [SensorErrorKind.GPU_UNAVAILABLE]
    now[0] = 5
    assert source.read().gpus == [] and nvml.init_calls == 1  # not retried before retry_s
    now[0] = 11
    source.read()
    now[0] = 22
    assert len(source.read().gpus) == 2 and nvml.init_calls == 3
    source.close()
    assert nvml.shutdown_calls == 1


def test_real_pynvml_on_a_machine_without_a_driver() -> None:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this machine has an NVIDIA driver")
    reading = NvmlGpuSource(pynvml).read()
    assert reading.gpus == []
    assert reading.errors[0].kind is SensorErrorKind.GPU_UNAVAILABLE
    assert "NVML" in reading.errors[0].message


def _trace(tmp_path: Path, utilizations: list[float]) -> Path:
    path = tmp_path / "trace.jsonl"
    lines = [
        Sample(ts=i, pod="a/b", seq=i, gpus=[GpuSample(index=0, utilization=u)]).model_dump_json(by_alias=True)
        for i, u in enumerate(utilizations)
    ]
    path.write_text("\n".join(lines) + "\n\n")
    return path


def test_replay_loops(tmp_path: Path) -> None:
    source = ReplayGpuSource.from_file(_trace(tmp_path, [0.1, 0.2]))
    assert [source.read().gpus[0].utilization for _ in range(5)] == [0.1, 0.2, 0.1, 0.2, 0.1]


def test_replay_holds(tmp_path: Path) -> None:
    source = ReplayGpuSource.from_file(_trace(tmp_path, [0.1, 0.2]), TraceEnd.HOLD)
    assert [source.read().gpus[0].utilization for _ in range(4)] == [0.1, 0.2, 0.2, 0.2]


def test_bad_traces(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(TraceError, match="no samples"):
        load_trace(tmp_path / "empty.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"ts": 1}\n')
    with pytest.raises(TraceError, match=r"bad\.jsonl:1"):
        load_trace(tmp_path / "bad.jsonl")
    with pytest.raises(TraceError):
        load_trace(tmp_path / "missing.jsonl")
