"""A window over one pod's recent samples, with the rolling statistics the window rules read.

The statistics are kept incrementally (O(1) per sample, whatever the window length), so that the
mining-signature rule costs the same at a 60-sample window as at a 600-sample one.
"""

from __future__ import annotations

import math
from collections import deque

from trainguard.api.sample import Sample
from trainguard.detection.context import DCGM_TENSOR_ACTIVE, MiningThresholds


class GpuSeries:
    """One GPU's last `length` samples (utilization, power, framebuffer fraction) and their sums."""

    __slots__ = (
        "length",
        "low",
        "low_below",
        "mem_sum",
        "power_sq",
        "power_sum",
        "util_sq",
        "util_sum",
        "values",
    )

    def __init__(self, length: int, low_below: float) -> None:
        self.length = length
        self.low_below = low_below
        self.values: deque[tuple[float, float, float]] = deque()
        self.util_sum = self.util_sq = self.power_sum = self.power_sq = self.mem_sum = 0.0
        #: Samples in the window whose utilization is below `low_below`.
        self.low = 0

    def push(self, util: float, power: float, mem_fraction: float) -> None:
        values = self.values
        if len(values) == self.length:
            u, p, m = values.popleft()
            self.util_sum -= u
            self.util_sq -= u * u
            self.power_sum -= p
            self.power_sq -= p * p
            self.mem_sum -= m
            if u < self.low_below:
                self.low -= 1
        values.append((util, power, mem_fraction))
        self.util_sum += util
        self.util_sq += util * util
        self.power_sum += power
        self.power_sq += power * power
        self.mem_sum += mem_fraction
        if util < self.low_below:
            self.low += 1

    @property
    def full(self) -> bool:
        return len(self.values) == self.length

    @property
    def util_mean(self) -> float:
        return self.util_sum / len(self.values) if self.values else 0.0

    @property
    def util_stddev(self) -> float:
        n = len(self.values)
        if not n:
            return 0.0
        mean = self.util_sum / n
        return math.sqrt(max(self.util_sq / n - mean * mean, 0.0))

    @property
    def power_mean(self) -> float:
        return self.power_sum / len(self.values) if self.values else 0.0

    @property
    def power_cv(self) -> float:
        """Coefficient of variation of power (stddev / mean); 0 when no power is reported."""
        n = len(self.values)
        if not n or self.power_sum <= 0.0:
            return 0.0
        mean = self.power_sum / n
        return math.sqrt(max(self.power_sq / n - mean * mean, 0.0)) / mean

    @property
    def mem_fraction_mean(self) -> float:
        return self.mem_sum / len(self.values) if self.values else 0.0


class Window:
    """The recent samples of one pod: the previous sample's seq, per-GPU series, DCGM tensor activity."""

    __slots__ = ("_thresholds", "gpus", "previous_seq", "samples", "seq", "tensor", "tensor_sum")

    def __init__(self, thresholds: MiningThresholds) -> None:
        self._thresholds = thresholds
        self.gpus: dict[int, GpuSeries] = {}
        #: The seq of the sample before the latest one (None before the second sample).
        self.previous_seq: int | None = None
        self.seq: int | None = None
        #: Samples pushed so far.
        self.samples = 0
        #: Pod-level DCGM tensor-pipe activity per sample; None where the sample had none.
        self.tensor: deque[float | None] = deque(maxlen=thresholds.window_samples)
        self.tensor_sum = 0.0

    def push(self, sample: Sample) -> None:
        self.previous_seq = self.seq
        self.seq = sample.seq
        self.samples += 1
        gpus = self.gpus
        seen = 0
        for g in sample.gpus:
            series = gpus.get(g.index)
            if series is None:
                t = self._thresholds
                series = gpus[g.index] = GpuSeries(t.window_samples, t.min_utilization)
            total = g.memory_total_bytes
            util = g.utilization
            power = g.power_watts
            mem = g.memory_used_bytes / total if total else 1.0
            # GpuSeries.push, inlined: this runs for every GPU of every sample.
            values = series.values
            if len(values) == series.length:
                u, p, m = values.popleft()
                series.util_sum -= u
                series.util_sq -= u * u
                series.power_sum -= p
                series.power_sq -= p * p
                series.mem_sum -= m
                if u < series.low_below:
                    series.low -= 1
            values.append((util, power, mem))
            series.util_sum += util
            series.util_sq += util * util
            series.power_sum += power
            series.power_sq += power * power
            series.mem_sum += mem
            if util < series.low_below:
                series.low += 1
            seen += 1
        if seen != len(gpus):
            # A GPU that is missing from a sample starts over: its window is no longer consecutive.
            present = {g.index for g in sample.gpus}
            for index in [i for i in gpus if i not in present]:
                del gpus[index]
        tensor = sample.dcgm.get(DCGM_TENSOR_ACTIVE) if sample.dcgm else None
        tq = self.tensor
        if len(tq) == tq.maxlen:
            old = tq[0]
            if old is not None:
                self.tensor_sum -= old
        tq.append(tensor)
        if tensor is not None:
            self.tensor_sum += tensor

    @property
    def tensor_active_mean(self) -> float | None:
        """Mean tensor-pipe activity over the window, or None unless every sample in it had the metric."""
        tq = self.tensor
        if not tq or any(v is None for v in tq):
            return None
        return self.tensor_sum / len(tq)
