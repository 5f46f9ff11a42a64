from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from trainguard.api.sample import GpuProcess, GpuSample, Sample
from trainguard.sensor.errors import SensorErrorKind
from trainguard.sensor.gpu import NvmlGpuSource, ReplayGpuSource, TraceEnd, TraceError, load_trace


class FakeNvmlError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


class FakeNvml:
    """The slice of pynvml the source uses, with two GPUs."""

    NVMLError = FakeNvmlError
    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_CLOCK_SM = 1

    def __init__(self, *, fail_init: int = 0) -> None:
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
        return 2

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
    ]
    again = source.read()
    assert again.gpus[1].utilization is None
    assert [(e.kind, e.message) for e in again.errors] == [(SensorErrorKind.GPU_READ, "GPU 1 SM clock: NVML error 15")]


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
