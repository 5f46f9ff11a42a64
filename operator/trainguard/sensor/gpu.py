"""GPU state: a small interface, NVML behind it, and a replay of a recorded trace.

NVML (the `pynvml` module of `nvidia-ml-py`) has no mock, so everything above this module talks to
`GpuSource`. Inside a container NVML reports *host* pids; `attribution` ties them to the pod's own
processes. No source ever raises from `read()`: what it could not read is an error entry.
"""

from __future__ import annotations

import contextlib
import enum
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from pydantic import ValidationError

from trainguard.api.sample import GpuProcess, GpuProfile, GpuSample, parse_sample
from trainguard.sensor.errors import SensorError, SensorErrorKind, error


@dataclass(frozen=True, slots=True)
class GpuReading:
    """The GPUs at one moment, as a source sees them (process names not yet attributed)."""

    gpus: list[GpuSample] = field(default_factory=list)
    minor_numbers: dict[int, int] = field(default_factory=dict)
    """GPU index -> the minor number of its device file (/dev/nvidia<minor>), where known."""
    errors: list[SensorError] = field(default_factory=list)


class GpuSource(Protocol):
    """Where GPU state comes from. `read` must not raise; `close` releases what the source holds."""

    def read(self) -> GpuReading: ...

    def close(self) -> None: ...


class NoGpuSource:
    """`--gpu-source none`: GPUs are not watched; every sample has `gpus: []` and no error."""

    def read(self) -> GpuReading:
        return GpuReading()

    def close(self) -> None:
        return None


#: The GPU profile's fields and the NVML GPM metrics they are read from (each a percentage 0..100).
GPM_METRICS: tuple[tuple[str, str], ...] = (
    ("tensor_active", "NVML_GPM_METRIC_ANY_TENSOR_UTIL"),
    ("dram_active", "NVML_GPM_METRIC_DRAM_BW_UTIL"),
    ("int_active", "NVML_GPM_METRIC_INTEGER_UTIL"),
    ("fp16_active", "NVML_GPM_METRIC_FP16_UTIL"),
    ("fp32_active", "NVML_GPM_METRIC_FP32_UTIL"),
    ("fp64_active", "NVML_GPM_METRIC_FP64_UTIL"),
    ("sm_active", "NVML_GPM_METRIC_SM_UTIL"),
    ("sm_occupancy", "NVML_GPM_METRIC_SM_OCCUPANCY"),
)

#: NVML_ERROR_FUNCTION_NOT_FOUND: a driver too old for the call (GPM needs R520 or later).
_FUNCTION_NOT_FOUND = 13


def gpm_request(nvml: ModuleType | Any, older: Any, newer: Any) -> Any:
    """pynvml's `c_nvmlGpmMetricsGet_t` asking for GPM_METRICS between two GPM samples of one GPU."""
    get = nvml.c_nvmlGpmMetricsGet_t()
    get.version = nvml.NVML_GPM_METRICS_GET_VERSION
    get.numMetrics = len(GPM_METRICS)
    get.sample1 = older
    get.sample2 = newer
    for i, (_, metric) in enumerate(GPM_METRICS):
        get.metrics[i].metricId = getattr(nvml, metric)
    return get


@dataclass(slots=True)
class _Gpm:
    """One GPU's GPM state: whether it supports GPM, and its two samples (the last one taken, and the next)."""

    supported: bool
    previous: Any = None
    spare: Any = None
    taken: bool = False


class NvmlGpuSource:
    """Reads every GPU NVML can see.

    The profile (what the kernels computed) comes from NVML's GPU Performance Monitoring (GPM,
    Hopper and later): a GPM sample per GPU per read, and the metrics between this read's sample and
    the previous one, so the first read of a GPU has no profile. A GPU without GPM support has
    `profile: null` and one `gpu_unsupported` error says so.

    Without a driver `nvmlInit` raises (NVMLError_LibraryNotFound); the source then reports
    `gpu_unavailable` each tick and retries the initialisation every `retry_s` seconds. A reading a
    GPU cannot give (NVML_ERROR_NOT_SUPPORTED: utilization in MIG mode, power on some boards) is null
    in the sample, never 0.0, and a `gpu_unsupported` error names it once (the first sample that lacks
    it): it does not change while the GPU is in that mode, and the null says it at every sample.
    """

    def __init__(
        self, nvml: ModuleType | Any, *, retry_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._nvml = nvml
        self._retry_s = retry_s
        self._clock = clock
        self._initialised = False
        self._next_try = 0.0
        self._init_error = ""
        self._unsupported: set[str] = set()
        """The readings already reported as unsupported (`GPU <index> <what>`)."""
        self._gpm: dict[int, _Gpm] = {}

    def _ensure_initialised(self) -> bool:
        if self._initialised:
            return True
        now = self._clock()
        if now < self._next_try:
            return False
        self._next_try = now + self._retry_s
        try:
            self._nvml.nvmlInit()
        except self._nvml.NVMLError as exc:
            self._init_error = f"NVML unavailable ({exc}); no GPU is reported"
            return False
        except OSError as exc:  # a broken library file
            self._init_error = f"NVML unavailable ({exc}); no GPU is reported"
            return False
        self._initialised = True
        return True

    def read(self) -> GpuReading:
        if not self._ensure_initialised():
            return GpuReading(errors=[error(SensorErrorKind.GPU_UNAVAILABLE, self._init_error)])
        nvml = self._nvml
        errors: list[SensorError] = []
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except nvml.NVMLError as exc:
            return GpuReading(errors=[error(SensorErrorKind.GPU_READ, f"device count: {exc}")])
        gpus: list[GpuSample] = []
        minors: dict[int, int] = {}
        for index in range(count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
            except nvml.NVMLError as exc:
                errors.append(error(SensorErrorKind.GPU_READ, f"GPU {index}: {exc}"))
                continue
            values, minor = self._read_device(index, handle, errors)
            if minor is not None:
                minors[index] = minor
            try:
                gpus.append(GpuSample.model_validate(values))
            except ValidationError as exc:
                errors.append(error(SensorErrorKind.GPU_READ, f"GPU {index}: out of range ({exc.error_count()})"))
        return GpuReading(gpus=gpus, minor_numbers=minors, errors=errors)

    def _query(self, errors: list[SensorError], what: str, call: Callable[..., Any], *args: Any) -> Any:
        """call(*args), or None when NVML fails (an error entry unless the GPU does not support it)."""
        try:
            return call(*args)
        except self._nvml.NVMLError as exc:
            if getattr(exc, "value", None) != self._nvml.NVML_ERROR_NOT_SUPPORTED:
                errors.append(error(SensorErrorKind.GPU_READ, f"{what}: {exc}"))
            elif what not in self._unsupported:
                self._unsupported.add(what)
                errors.append(error(SensorErrorKind.GPU_UNSUPPORTED, f"{what}: not supported by this GPU (null)"))
            return None

    def _read_device(self, index: int, handle: Any, errors: list[SensorError]) -> tuple[dict[str, Any], int | None]:
        """The GpuSample fields of one device, and its minor number."""
        nvml = self._nvml
        values: dict[str, Any] = {"index": index}
        uuid = self._query(errors, f"GPU {index} uuid", nvml.nvmlDeviceGetUUID, handle)
        if uuid is not None:
            values["uuid"] = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
        minor = self._query(errors, f"GPU {index} minor number", nvml.nvmlDeviceGetMinorNumber, handle)
        rates = self._query(errors, f"GPU {index} utilization", nvml.nvmlDeviceGetUtilizationRates, handle)
        if rates is not None:
            values["utilization"] = min(max(float(rates.gpu) / 100.0, 0.0), 1.0)
        memory = self._query(errors, f"GPU {index} memory", nvml.nvmlDeviceGetMemoryInfo, handle)
        if memory is not None:
            values["memory_used_bytes"] = int(memory.used)
            values["memory_total_bytes"] = int(memory.total)
        power = self._query(errors, f"GPU {index} power", nvml.nvmlDeviceGetPowerUsage, handle)
        if power is not None:
            values["power_watts"] = float(power) / 1000.0  # NVML reports milliwatts
        clock = self._query(errors, f"GPU {index} SM clock", nvml.nvmlDeviceGetClockInfo, handle, nvml.NVML_CLOCK_SM)
        if clock is not None:
            values["sm_clock_mhz"] = int(clock)
        running = self._query(errors, f"GPU {index} processes", nvml.nvmlDeviceGetComputeRunningProcesses, handle)
        # usedGpuMemory is None where the driver cannot tell (pynvml maps NVML_VALUE_NOT_AVAILABLE to None).
        values["processes"] = [
            GpuProcess(pid=int(p.pid), used_memory_bytes=None if p.usedGpuMemory is None else int(p.usedGpuMemory))
            for p in running or ()
        ]
        profile = self._profile(index, handle, errors)
        if profile is not None:
            values["profile"] = profile
        return values, None if minor is None else int(minor)

    def _unsupported_once(self, errors: list[SensorError], what: str, why: str) -> None:
        if what not in self._unsupported:
            self._unsupported.add(what)
            errors.append(error(SensorErrorKind.GPU_UNSUPPORTED, f"{what}: {why}"))

    def _gpm_state(self, index: int, handle: Any, errors: list[SensorError]) -> _Gpm:
        state = self._gpm.get(index)
        if state is not None:
            return state
        nvml = self._nvml
        what = f"GPU {index} profile (GPM)"
        if not hasattr(nvml, "nvmlGpmQueryDeviceSupport"):  # an nvidia-ml-py older than GPM (12.520)
            self._unsupported_once(errors, what, "this nvidia-ml-py has no GPM API; null")
            state = self._gpm[index] = _Gpm(False)
            return state
        try:
            supported = bool(nvml.nvmlGpmQueryDeviceSupport(handle).isSupportedDevice)
            if supported:
                state = _Gpm(True, nvml.nvmlGpmSampleAlloc(), nvml.nvmlGpmSampleAlloc())
        except nvml.NVMLError as exc:
            if getattr(exc, "value", None) not in (nvml.NVML_ERROR_NOT_SUPPORTED, _FUNCTION_NOT_FOUND):
                errors.append(error(SensorErrorKind.GPU_READ, f"{what}: {exc}"))
                return _Gpm(False)  # not remembered: asked again next read
            supported = False
        if state is None:
            self._unsupported_once(errors, what, "not supported by this GPU or driver (Hopper or later); null")
            state = _Gpm(False)
        self._gpm[index] = state
        return state

    def _profile(self, index: int, handle: Any, errors: list[SensorError]) -> GpuProfile | None:
        """The GPM metrics between the previous read of this GPU and now; None on its first read or without GPM."""
        state = self._gpm_state(index, handle, errors)
        if not state.supported:
            return None
        nvml = self._nvml
        try:
            nvml.nvmlGpmSampleGet(handle, state.spare)
        except nvml.NVMLError as exc:
            errors.append(error(SensorErrorKind.GPU_READ, f"GPU {index} profile (GPM) sample: {exc}"))
            state.taken = False
            return None
        state.previous, state.spare = state.spare, state.previous
        if not state.taken:
            state.taken = True
            return None
        get = gpm_request(nvml, state.spare, state.previous)
        try:
            nvml.nvmlGpmMetricsGet(get)
        except nvml.NVMLError as exc:
            errors.append(error(SensorErrorKind.GPU_READ, f"GPU {index} profile (GPM) metrics: {exc}"))
            return None
        values: dict[str, float] = {}
        for i, (name, metric) in enumerate(GPM_METRICS):
            m = get.metrics[i]
            if int(m.nvmlReturn) == 0 and math.isfinite(m.value):
                values[name] = min(max(float(m.value) / 100.0, 0.0), 1.0)
            else:
                why = f"not given (NVML {m.nvmlReturn}); null"
                self._unsupported_once(errors, f"GPU {index} profile {metric}", why)
        return GpuProfile.model_validate(values)

    def close(self) -> None:
        for state in self._gpm.values():
            for gpm_sample in (state.previous, state.spare):
                if gpm_sample is not None:
                    with contextlib.suppress(self._nvml.NVMLError):
                        self._nvml.nvmlGpmSampleFree(gpm_sample)
        self._gpm.clear()
        if self._initialised:
            with contextlib.suppress(self._nvml.NVMLError):
                self._nvml.nvmlShutdown()
            self._initialised = False


class TraceEnd(enum.StrEnum):
    """What a replay does after the last sample of its trace."""

    LOOP = "loop"
    HOLD = "hold"


class TraceError(ValueError):
    """A trace file that cannot be replayed."""


def load_trace(path: Path) -> list[list[GpuSample]]:
    """The `gpus` of every sample in a JSON Lines trace, in order; TraceError when it has none or a bad line."""
    ticks: list[list[GpuSample]] = []
    try:
        with path.open("rb") as trace:
            for number, line in enumerate(trace, start=1):
                if not line.strip():
                    continue
                try:
                    ticks.append(list(parse_sample(line).gpus))
                except (ValidationError, ValueError) as exc:
                    raise TraceError(f"{path}:{number}: not a sample ({exc})") from exc
    except OSError as exc:
        raise TraceError(f"{path}: {exc.strerror or exc}") from exc
    if not ticks:
        raise TraceError(f"{path}: no samples")
    return ticks


class ReplayGpuSource:
    """Replays the `gpus` of a recorded trace, one sample per read, then loops or holds the last."""

    def __init__(self, ticks: list[list[GpuSample]], end: TraceEnd = TraceEnd.LOOP) -> None:
        if not ticks:
            raise TraceError("a replay needs at least one sample")
        self._ticks = ticks
        self._end = end
        self._position = 0

    @classmethod
    def from_file(cls, path: Path, end: TraceEnd = TraceEnd.LOOP) -> ReplayGpuSource:
        return cls(load_trace(path), end)

    def read(self) -> GpuReading:
        gpus = self._ticks[self._position]
        if self._position + 1 < len(self._ticks):
            self._position += 1
        elif self._end is TraceEnd.LOOP:
            self._position = 0
        return GpuReading(gpus=list(gpus))

    def close(self) -> None:
        return None
