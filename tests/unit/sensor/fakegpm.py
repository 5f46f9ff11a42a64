"""A fake of pynvml's GPM slice (NVML GPU Performance Monitoring), for `NvmlGpuSource` tests.

It behaves as the driver does where it matters to the source: a GPM sample is a buffer the
caller allocates, fills at a moment (`nvmlGpmSampleGet`) and frees; metrics exist only *between*
two samples of the same GPU, the older first; each metric has its own return code (a SKU without
integer-pipe counters answers NVML_ERROR_NOT_SUPPORTED for that one metric). Values are
percentages 0..100, as NVML gives them. The metric ids are pynvml's own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pynvml

NOT_SUPPORTED = 3


@dataclass
class FakeGpmSample:
    handle: int | None = None
    #: The fake's clock when the sample was taken (None: never taken).
    tick: int | None = None
    freed: bool = False


@dataclass
class FakeGpmMetric:
    metricId: int = 0
    nvmlReturn: int = 0
    value: float = 0.0


@dataclass
class FakeGpmMetricsGet:
    version: int = 0
    numMetrics: int = 0
    sample1: FakeGpmSample | None = None
    sample2: FakeGpmSample | None = None
    metrics: list[FakeGpmMetric] = field(default_factory=lambda: [FakeGpmMetric() for _ in range(32)])


#: What a GPU computes between two ticks: metric id -> percentage, or None for "not supported".
Workload = Callable[[int, int, int], dict[int, float | None]]


class FakeGpm:
    """The GPM functions of pynvml. `gpm_supported`: the handles with GPM; `workload` gives each metric."""

    NVML_GPM_METRICS_GET_VERSION = pynvml.NVML_GPM_METRICS_GET_VERSION
    NVML_GPM_METRIC_ANY_TENSOR_UTIL = pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL
    NVML_GPM_METRIC_DRAM_BW_UTIL = pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL
    NVML_GPM_METRIC_INTEGER_UTIL = pynvml.NVML_GPM_METRIC_INTEGER_UTIL
    NVML_GPM_METRIC_FP16_UTIL = pynvml.NVML_GPM_METRIC_FP16_UTIL
    NVML_GPM_METRIC_FP32_UTIL = pynvml.NVML_GPM_METRIC_FP32_UTIL
    NVML_GPM_METRIC_FP64_UTIL = pynvml.NVML_GPM_METRIC_FP64_UTIL
    NVML_GPM_METRIC_SM_UTIL = pynvml.NVML_GPM_METRIC_SM_UTIL
    NVML_GPM_METRIC_SM_OCCUPANCY = pynvml.NVML_GPM_METRIC_SM_OCCUPANCY
    c_nvmlGpmMetricsGet_t = FakeGpmMetricsGet

    def __init__(self, gpm_supported: set[int], workload: Workload, error: type[Exception]) -> None:
        self.gpm_supported = gpm_supported
        self.workload = workload
        self._error = error
        self.tick = 0
        self.samples: list[FakeGpmSample] = []
        #: Handles whose next nvmlGpmSampleGet fails (NVML_ERROR_UNKNOWN).
        self.fail_sample: set[int] = set()

    def nvmlGpmQueryDeviceSupport(self, handle: int) -> object:
        return type("Support", (), {"isSupportedDevice": int(handle in self.gpm_supported), "version": 1})()

    def nvmlGpmSampleAlloc(self) -> FakeGpmSample:
        s = FakeGpmSample()
        self.samples.append(s)
        return s

    def nvmlGpmSampleFree(self, s: FakeGpmSample) -> None:
        assert not s.freed, "freed twice"
        s.freed = True

    def nvmlGpmSampleGet(self, handle: int, s: FakeGpmSample) -> FakeGpmSample:
        assert handle in self.gpm_supported and not s.freed
        if handle in self.fail_sample:
            self.fail_sample.discard(handle)
            raise self._error(999)
        self.tick += 1
        s.handle, s.tick = handle, self.tick
        return s

    def nvmlGpmMetricsGet(self, get: FakeGpmMetricsGet) -> FakeGpmMetricsGet:
        a, b = get.sample1, get.sample2
        assert get.version == self.NVML_GPM_METRICS_GET_VERSION
        assert a is not None and b is not None and a.tick is not None and b.tick is not None
        assert a.handle == b.handle and a.tick < b.tick, "metrics are between two samples of one GPU, older first"
        assert a.handle is not None
        values = self.workload(a.handle, a.tick, b.tick)
        for m in get.metrics[: get.numMetrics]:
            v = values.get(m.metricId)
            m.nvmlReturn, m.value = (NOT_SUPPORTED, 0.0) if v is None else (0, v)
        return get
