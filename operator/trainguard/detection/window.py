"""A window over one pod's recent samples, with the rolling statistics the window rules read.

The mining signature needs a full window in which every sample is busy (utilization at or above the
floor), so a GPU's series holds only its current *run* of busy samples, the last `length` of them:
a sample below the floor ends the run and empties the series. A GPU that dips, as training does,
costs one comparison per sample; a saturated one costs an O(1) update of running sums, whatever
the window length (see `GpuSeries`).
"""

from __future__ import annotations

import math
from collections import deque
from operator import attrgetter

from trainguard.api.sample import Sample
from trainguard.detection.context import DCGM_TENSOR_ACTIVE, MiningThresholds

_FIELDS = attrgetter("__dict__")


def _stddev(total: float, squares: float, n: int) -> float:
    """Population standard deviation from a running sum and sum of squares (0 for no values)."""
    if not n:
        return 0.0
    mean = total / n
    return math.sqrt(max(squares / n - mean * mean, 0.0))


class GpuSeries:
    """One GPU's current run of busy samples, the last `length` of them (utilization, power,
    framebuffer fraction), and their sums. `full` means the last `length` samples were all busy.

    The sums are made when the run first fills the window (once per run, O(length)) and kept
    incrementally from then on (O(1) per sample); a run that ends before it fills the window (a
    GPU that dips, as training does) costs an append per busy sample.
    """

    __slots__ = (
        "length",
        "low_below",
        "mem_sum",
        "power_sq",
        "power_sum",
        "summed",
        "util_sq",
        "util_sum",
        "values",
    )

    def __init__(self, length: int, low_below: float) -> None:
        self.length = length
        self.low_below = low_below
        self.values: deque[tuple[float, float, float]] = deque()
        self.util_sum = self.util_sq = self.power_sum = self.power_sq = self.mem_sum = 0.0
        #: Whether the sums are those of `values` (kept from when the run filled the window).
        self.summed = False

    def reset(self) -> None:
        """A sample below the floor: the run is over."""
        self.values.clear()
        self.summed = False

    def sum(self) -> None:
        """Make the sums of `values` afresh."""
        values = self.values
        self.util_sum = math.fsum(u for u, _, _ in values)
        self.util_sq = math.fsum(u * u for u, _, _ in values)
        self.power_sum = math.fsum(p for _, p, _ in values)
        self.power_sq = math.fsum(p * p for _, p, _ in values)
        self.mem_sum = math.fsum(m for _, _, m in values)
        self.summed = True

    def push(self, util: float, power: float, mem_fraction: float) -> None:
        """One sample (`Window.push` runs the same steps inline)."""
        values = self.values
        if util < self.low_below:
            if values:
                self.reset()
            return
        values.append((util, power, mem_fraction))
        if self.summed:
            u, p, m = values.popleft()
            self.util_sum += util - u
            self.util_sq += util * util - u * u
            self.power_sum += power - p
            self.power_sq += power * power - p * p
            self.mem_sum += mem_fraction - m
        elif len(values) == self.length:
            self.sum()

    @property
    def full(self) -> bool:
        """The window is full and no sample in it is below the floor."""
        return len(self.values) == self.length

    def _sums(self) -> None:
        if not self.summed:
            self.sum()

    @property
    def util_mean(self) -> float:
        self._sums()
        return self.util_sum / len(self.values) if self.values else 0.0

    @property
    def util_stddev(self) -> float:
        self._sums()
        return _stddev(self.util_sum, self.util_sq, len(self.values))

    @property
    def power_mean(self) -> float:
        self._sums()
        return self.power_sum / len(self.values) if self.values else 0.0

    @property
    def power_cv(self) -> float:
        """Coefficient of variation of power (stddev / mean); 0 when no power is reported."""
        self._sums()
        n = len(self.values)
        if not n or self.power_sum <= 0.0:
            return 0.0
        return _stddev(self.power_sum, self.power_sq, n) / (self.power_sum / n)

    @property
    def mem_fraction_mean(self) -> float:
        self._sums()
        return self.mem_sum / len(self.values) if self.values else 0.0


class Window:
    """The recent samples of one pod: the previous sample's seq, per-GPU series, DCGM tensor activity."""

    __slots__ = (
        "_bounded",
        "_bounds",
        "_low_below",
        "_tensor_mean",
        "_thresholds",
        "full_gpus",
        "gpus",
        "over_bounds",
        "previous_seq",
        "samples",
        "seq",
        "tensor",
    )

    def __init__(self, thresholds: MiningThresholds, bounds: tuple[float, float, float] | None = None) -> None:
        self._thresholds = thresholds
        self._low_below = thresholds.min_utilization
        inf = float("inf")
        #: (utilization, memory bytes, power watts) above which a GPU is `over_bounds`.
        self._bounds = bounds or (inf, inf, inf)
        self._bounded = any(b != inf for b in self._bounds)
        self.gpus: dict[int, GpuSeries] = {}
        #: How many of the GPUs' series are full (a full window of busy samples) after the latest sample.
        self.full_gpus = 0
        #: Whether a GPU of the latest sample was above one of `bounds`.
        self.over_bounds = False
        #: The seq of the sample before the latest one (None before the second sample).
        self.previous_seq: int | None = None
        self.seq: int | None = None
        #: Samples pushed so far.
        self.samples = 0
        #: Pod-level DCGM tensor-pipe activity per sample, the last `window_samples` of them; None
        #: where the sample had none. Summed when read (`tensor_active_mean`), which only the mining
        #: rule does, and only for a GPU with a full window: no per-sample arithmetic.
        self.tensor: deque[float | None] = deque(maxlen=thresholds.window_samples)
        #: (samples, mean) as of the last read, so that GPUs of one sample share one sum.
        self._tensor_mean: tuple[int, float | None] = (-1, None)

    def push(self, sample: Sample) -> None:
        # The models' fields are read from their field dicts: a pydantic model's attribute access
        # goes through its `__getattr__` hook (and is not specialized by the interpreter), a dict
        # subscript does not. This runs for every sample.
        fields = sample.__dict__
        self.previous_seq = self.seq
        self.seq = fields["seq"]
        self.samples += 1
        gpus = self.gpus
        full = 0
        over = False
        low_below = self._low_below
        bounded = self._bounded
        if bounded:
            max_util, max_mem, max_power = self._bounds
        sample_gpus = fields["gpus"]
        for g in map(_FIELDS, sample_gpus):
            index = g["index"]
            series = gpus.get(index)
            if series is None:
                series = gpus[index] = GpuSeries(self._thresholds.window_samples, low_below)
            util = g["utilization"]
            if bounded and (util > max_util or g["memory_used_bytes"] > max_mem or g["power_watts"] > max_power):
                over = True
            # GpuSeries.push, inlined: this runs for every GPU of every sample.
            values = series.values
            if util < low_below:
                if values:
                    values.clear()  # GpuSeries.reset
                    series.summed = False
                continue
            power = g["power_watts"]
            total = g["memory_total_bytes"]
            mem = g["memory_used_bytes"] / total if total else 1.0
            values.append((util, power, mem))
            if series.summed:
                u, p, m = values.popleft()
                series.util_sum += util - u
                series.util_sq += util * util - u * u
                series.power_sum += power - p
                series.power_sq += power * power - p * p
                series.mem_sum += mem - m
                full += 1
            elif len(values) == series.length:
                series.sum()
                full += 1
        if len(sample_gpus) != len(gpus):
            # A GPU that is missing from a sample starts over: its window is no longer consecutive.
            present = {g.index for g in sample_gpus}
            for index in [i for i in gpus if i not in present]:
                del gpus[index]
            full = sum(1 for s in gpus.values() if s.full)
        self.full_gpus = full
        self.over_bounds = over
        dcgm = fields["dcgm"]
        self.tensor.append(dcgm.get(DCGM_TENSOR_ACTIVE) if dcgm else None)

    @property
    def tensor_active_mean(self) -> float | None:
        """Mean tensor-pipe activity over the window, or None unless every sample in it had the metric."""
        samples, mean = self._tensor_mean
        if samples != self.samples:
            tq = self.tensor
            mean = None if not tq or None in tq else math.fsum(tq) / len(tq)  # type: ignore[arg-type]
            self._tensor_mean = (self.samples, mean)
        return mean
