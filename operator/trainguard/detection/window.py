"""What the engine keeps of one pod's recent samples for the GPU rules: per GPU, its last
`window_samples` consecutive samples and their running sums (O(1) per sample).

Two readings of one window feed `gpu.mining-signature` (docs/detection.md):

- the **profile** (what the kernels computed: `gpus[].profile`, from NVML GPM or DCGM): judged
  when every sample of the window has one. Duty cycles are tolerated: the pipe mix is averaged over
  the samples in which the GPU was active, and the GPU need only be active on average (`min_duty`);
- **today's evidence** (utilization, flatness, power, memory, the pod's DCGM tensor metric): judged
  when a sample of the window lacks the profile. Every sample must then be busy (utilization known
  and at or above the floor); a reading that is null in a sample leaves that test out (power) or
  that corroboration unusable (memory, tensor).

A GPU missing from a sample starts over: its window is no longer consecutive.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from operator import add

from trainguard.api.sample import GpuSample, Sample
from trainguard.detection.context import DCGM_TENSOR_ACTIVE, MiningThresholds


def _stddev(total: float, squares: float, n: int) -> float:
    """Population standard deviation from a sum and a sum of squares."""
    if not n:
        return 0.0
    mean = total / n
    return math.sqrt(max(squares / n - mean * mean, 0.0))


@dataclass(frozen=True, slots=True)
class PipeMix:
    """The mean activity of each pipe over the active samples of a fully profiled window."""

    #: Mean activity over the whole window (utilization, or the profile's smActive without it).
    duty: float
    #: Samples of the window in which the GPU was active (activity at or above `active_floor`).
    active_samples: int
    tensor: float
    int: float
    dram: float
    fp16: float
    fp32: float
    fp64: float


@dataclass(frozen=True, slots=True)
class GpuStats:
    """One GPU's full window of consecutive samples, summarised (what `gpu.mining-signature` reads)."""

    index: int
    samples: int
    #: Whether every sample was busy (utilization known and at or above `min_utilization`): the
    #: utilization, power, memory and tensor figures below are about those samples.
    saturated: bool
    utilization_mean: float
    utilization_stddev: float
    #: Mean and coefficient of variation of power; None unless every sample had a power reading.
    power_mean: float | None
    power_cv: float | None
    #: Mean framebuffer use as a fraction of the total; None unless every sample had both readings.
    memory_fraction: float | None
    #: Mean tensor-pipe activity (the GPU's profile, or the pod's DCGM metric); None unless every sample had it.
    tensor_active: float | None
    #: The pipe mix; None unless every sample of the window had a usable profile.
    profile: PipeMix | None


# Columns of a sample's vector (a sample is a fixed-length tuple of floats; the series keeps their sums).
_UTIL, _UTIL2, _BUSY, _POWER, _POWER2, _POWER_N, _MEM, _MEM_N, _TENSOR, _TENSOR_N = range(10)
_ACTIVITY, _PROFILED, _ACTIVE, _P_TENSOR, _P_INT, _P_DRAM, _P_FP16, _P_FP32, _P_FP64 = range(10, 19)
_COLUMNS = 19
#: The first ten columns of a sample that is not busy.
_IDLE: tuple[float, ...] = (0.0,) * 10


def _add_sub(total: float, new: float, old: float) -> float:
    return total + new - old


def _z(x: float | None) -> float:
    return 0.0 if x is None else x


class GpuSeries:
    """One GPU's last `length` consecutive samples as vectors, and the vectors' sums."""

    __slots__ = ("length", "sums", "values")

    def __init__(self, length: int) -> None:
        self.length = length
        self.values: deque[tuple[float, ...]] = deque()
        self.sums = [0.0] * _COLUMNS

    def push(self, v: tuple[float, ...]) -> None:
        self.values.append(v)
        if len(self.values) > self.length:
            self.sums = list(map(_add_sub, self.sums, v, self.values.popleft()))
        else:
            self.sums = list(map(add, self.sums, v))

    @property
    def full(self) -> bool:
        return len(self.values) == self.length

    @property
    def judgeable(self) -> bool:
        """Full, and either every sample busy or every sample profiled: what the signature can judge."""
        n = self.length
        return len(self.values) == n and (round(self.sums[_BUSY]) == n or round(self.sums[_PROFILED]) == n)

    def stats(self, index: int) -> GpuStats:
        n = len(self.values)
        s = self.sums
        # Counts are sums of 0/1: round them, float error must not lose a sample.
        busy, power_n, mem_n, tensor_n = (round(s[k]) for k in (_BUSY, _POWER_N, _MEM_N, _TENSOR_N))
        profiled, active = round(s[_PROFILED]), round(s[_ACTIVE])
        saturated = busy == n
        power_mean = s[_POWER] / n if saturated and power_n == n else None
        power_cv = None
        if power_mean is not None:
            power_cv = _stddev(s[_POWER], s[_POWER2], n) / power_mean if power_mean > 0 else 0.0
        mix = None
        if profiled == n:
            per = max(active, 1)
            mix = PipeMix(
                duty=s[_ACTIVITY] / n,
                active_samples=active,
                tensor=s[_P_TENSOR] / per,
                int=s[_P_INT] / per,
                dram=s[_P_DRAM] / per,
                fp16=s[_P_FP16] / per,
                fp32=s[_P_FP32] / per,
                fp64=s[_P_FP64] / per,
            )
        return GpuStats(
            index=index,
            samples=n,
            saturated=saturated,
            utilization_mean=s[_UTIL] / n,
            utilization_stddev=_stddev(s[_UTIL], s[_UTIL2], n),
            power_mean=power_mean,
            power_cv=power_cv,
            memory_fraction=s[_MEM] / n if saturated and mem_n == n else None,
            tensor_active=s[_TENSOR] / n if saturated and tensor_n == n else None,
            profile=mix,
        )


_NO_PIPES = (0.0,) * 6


def _vector(g: GpuSample, dcgm: dict[str, float], t: MiningThresholds) -> tuple[float, ...]:
    """One sample of one GPU as the series' columns (the hot path: one call per GPU per sample)."""
    util = g.utilization
    p = g.profile
    if util is not None and util >= t.min_utilization:
        power = g.power_watts
        used, total = g.memory_used_bytes, g.memory_total_bytes
        mem = used / total if used is not None and total else None
        tensor = p.tensor_active if p is not None and p.tensor_active is not None else dcgm.get(DCGM_TENSOR_ACTIVE)
        busy: tuple[float, ...] = (
            util,
            util * util,
            1.0,
            0.0 if power is None else power,
            0.0 if power is None else power * power,
            0.0 if power is None else 1.0,
            0.0 if mem is None else mem,
            0.0 if mem is None else 1.0,
            0.0 if tensor is None else tensor,
            0.0 if tensor is None else 1.0,
        )
    else:
        busy = _IDLE
    activity = util if util is not None else (p.sm_active if p is not None else None)
    # A usable profile: activity known, tensor and FP32 pipes known, and the integer pipes or the
    # memory interface known (not every SKU reports the integer pipes).
    if (
        p is None
        or activity is None
        or p.tensor_active is None
        or p.fp32_active is None
        or (p.int_active is None and p.dram_active is None)
    ):
        return (*busy, _z(activity), 0.0, 0.0, *_NO_PIPES)
    if activity < t.active_floor:
        return (*busy, activity, 1.0, 0.0, *_NO_PIPES)
    return (
        *busy,
        activity,
        1.0,
        1.0,
        p.tensor_active,
        _z(p.int_active),
        _z(p.dram_active),
        _z(p.fp16_active),
        p.fp32_active,
        _z(p.fp64_active),
    )


class Window:
    """The GPU series of one pod, fed one sample at a time."""

    __slots__ = ("gpus", "thresholds")

    def __init__(self, thresholds: MiningThresholds) -> None:
        self.thresholds = thresholds
        self.gpus: dict[int, GpuSeries] = {}

    def push(self, sample: Sample) -> None:
        present = set()
        for g in sample.gpus:
            present.add(g.index)
            series = self.gpus.get(g.index)
            if series is None:
                series = self.gpus[g.index] = GpuSeries(self.thresholds.window_samples)
            series.push(_vector(g, sample.dcgm, self.thresholds))
        for index in [i for i in self.gpus if i not in present]:
            del self.gpus[index]

    def full(self) -> tuple[GpuStats, ...]:
        """The GPUs whose window is full of consecutive samples, every one busy or every one profiled, summarised
        (a window with neither cannot be judged; it is left out, which keeps the steady state cheap)."""
        return tuple(s.stats(i) for i, s in sorted(self.gpus.items()) if s.judgeable)
