"""What the engine keeps of one pod's recent samples for the GPU rules: per GPU, the current run of
busy samples (the last `window_samples` of them) and their running sums.

The mining signature needs a full window in which every sample is busy (utilization known and at
or above the floor), so a GPU's series holds only its current run of busy samples: a sample below
the floor, or with no utilization reading, ends the run. Readings NVML could not take (null) are
counted: the power test needs every sample's power, the memory corroboration every sample's
memory, the tensor corroboration every sample's tensor-pipe activity.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from trainguard.api.sample import GpuSample, Sample
from trainguard.detection.context import DCGM_TENSOR_ACTIVE, MiningThresholds


def _stddev(total: float, squares: float, n: int) -> float:
    """Population standard deviation from a sum and a sum of squares."""
    if not n:
        return 0.0
    mean = total / n
    return math.sqrt(max(squares / n - mean * mean, 0.0))


@dataclass(frozen=True, slots=True)
class GpuStats:
    """One GPU's full window of busy samples, summarised (what `gpu.mining-signature` reads)."""

    index: int
    samples: int
    utilization_mean: float
    utilization_stddev: float
    #: Mean and coefficient of variation of power; None unless every sample had a power reading.
    power_mean: float | None
    power_cv: float | None
    #: Mean framebuffer use as a fraction of the total; None unless every sample had both readings.
    memory_fraction: float | None
    #: Mean tensor-pipe activity (the GPU's profile, or the pod's DCGM metric); None unless every sample had it.
    tensor_active: float | None


class GpuSeries:
    """One GPU's current run of busy samples (the last `length`) and their sums, kept O(1) per sample."""

    __slots__ = ("length", "missing", "sums", "values")

    def __init__(self, length: int) -> None:
        self.length = length
        #: (utilization, power, memory fraction, tensor activity) per sample, None where unknown.
        self.values: deque[tuple[float, float | None, float | None, float | None]] = deque()
        #: Sums of utilization, its square, power, its square, memory fraction, tensor activity.
        self.sums = [0.0] * 6
        #: Samples in the window missing power, memory, tensor readings.
        self.missing = [0, 0, 0]

    def reset(self) -> None:
        self.values.clear()
        self.sums = [0.0] * 6
        self.missing = [0, 0, 0]

    def _add(self, v: tuple[float, float | None, float | None, float | None], sign: int) -> None:
        util, power, mem, tensor = v
        s = self.sums
        s[0] += sign * util
        s[1] += sign * util * util
        for k, x, at in ((0, power, 2), (1, mem, 4), (2, tensor, 5)):
            if x is None:
                self.missing[k] += sign
            else:
                s[at] += sign * x
                if k == 0:
                    s[3] += sign * x * x

    def push(self, util: float, power: float | None, mem: float | None, tensor: float | None) -> None:
        v = (util, power, mem, tensor)
        self.values.append(v)
        self._add(v, 1)
        if len(self.values) > self.length:
            self._add(self.values.popleft(), -1)

    @property
    def full(self) -> bool:
        return len(self.values) == self.length

    def stats(self, index: int) -> GpuStats:
        n = len(self.values)
        s = self.sums
        power_mean = s[2] / n if not self.missing[0] else None
        power_cv = None
        if power_mean is not None:
            power_cv = _stddev(s[2], s[3], n) / power_mean if power_mean > 0 else 0.0
        return GpuStats(
            index=index,
            samples=n,
            utilization_mean=s[0] / n,
            utilization_stddev=_stddev(s[0], s[1], n),
            power_mean=power_mean,
            power_cv=power_cv,
            memory_fraction=s[4] / n if not self.missing[1] else None,
            tensor_active=s[5] / n if not self.missing[2] else None,
        )


def _tensor(g: GpuSample, dcgm: dict[str, float]) -> float | None:
    if g.profile is not None and g.profile.tensor_active is not None:
        return g.profile.tensor_active
    return dcgm.get(DCGM_TENSOR_ACTIVE)


class Window:
    """The GPU series of one pod, fed one sample at a time."""

    __slots__ = ("gpus", "thresholds")

    def __init__(self, thresholds: MiningThresholds) -> None:
        self.thresholds = thresholds
        self.gpus: dict[int, GpuSeries] = {}

    def push(self, sample: Sample) -> None:
        floor = self.thresholds.min_utilization
        present = set()
        for g in sample.gpus:
            present.add(g.index)
            series = self.gpus.get(g.index)
            if series is None:
                series = self.gpus[g.index] = GpuSeries(self.thresholds.window_samples)
            util = g.utilization
            if util is None or util < floor:
                if series.values:
                    series.reset()
                continue
            mem = None
            if g.memory_used_bytes is not None and g.memory_total_bytes:
                mem = g.memory_used_bytes / g.memory_total_bytes
            series.push(util, g.power_watts, mem, _tensor(g, sample.dcgm))
        # A GPU missing from a sample starts over: its window is no longer consecutive.
        for index in [i for i in self.gpus if i not in present]:
            del self.gpus[index]

    def full(self) -> tuple[GpuStats, ...]:
        """The GPUs whose window is full of busy samples, summarised."""
        return tuple(s.stats(i) for i, s in sorted(self.gpus.items()) if s.full)
