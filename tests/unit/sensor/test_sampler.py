from __future__ import annotations

import threading
import time

from trainguard.api.sample import GpuSample
from trainguard.sensor.errors import MAX_ERRORS_PER_SAMPLE, SensorErrorKind, error, render
from trainguard.sensor.gpu import GpuReading, NoGpuSource
from trainguard.sensor.sampler import Sampler, SamplerSettings, run_loop


class SlowGpu:
    """Answers at once until `hang` is set, then blocks until released."""

    def __init__(self) -> None:
        self.hang = threading.Event()
        self.release = threading.Event()
        self.reads = 0

    def read(self) -> GpuReading:
        self.reads += 1
        if self.hang.is_set():
            self.release.wait(10)
        return GpuReading(gpus=[GpuSample(index=0, uuid="GPU-0", utilization=self.reads / 100)])

    def close(self) -> None:
        self.release.set()


def test_seq_starts_at_zero_and_increases_by_one(handmade: str) -> None:
    sampler = Sampler(
        SamplerSettings(pod="ns/p", proc_root=handmade, socket_reader="proc", interval_s=1), NoGpuSource()
    )
    try:
        samples = [sampler.tick()[0] for _ in range(3)]
    finally:
        sampler.close()
    assert [s.seq for s in samples] == [0, 1, 2]
    assert samples[0].pod == "ns/p" and samples[0].sensor.version
    assert 12 in [p.pid for p in samples[0].processes]
    assert samples[0].sensor.reader == "proc"  # --socket-reader proc: the fake tree's tables
    assert {(u.proto, u.pid) for u in samples[0].unconnected} >= {("udp", 7), ("raw", None), ("packet", None)}


def test_a_hung_gpu_source_never_stalls_the_stream(handmade: str) -> None:
    gpu = SlowGpu()
    sampler = Sampler(SamplerSettings(pod="ns/p", proc_root=handmade, socket_reader="proc", interval_s=0.2), gpu)
    try:
        first, _ = sampler.tick()
        gpu.hang.set()
        started = time.monotonic()
        stale, errors = sampler.tick()
        again, _ = sampler.tick()
        elapsed = time.monotonic() - started
        reads_while_hung = gpu.reads
        gpu.hang.clear()
        gpu.release.set()
        time.sleep(0.05)
        recovered, recovered_errors = sampler.tick()
    finally:
        sampler.close()
    assert elapsed < 2 * 0.2 * 0.5 + 0.15  # two ticks, each waiting at most the deadline
    assert stale.gpus == first.gpus  # the previous GPU state, marked stale
    assert SensorErrorKind.GPU_STALE in [e.kind for e in errors]
    assert any(e.kind is SensorErrorKind.GPU_STALE for e in stale.sensor.errors)
    assert again.gpus == first.gpus and reads_while_hung == 2  # no pile-up of calls behind the hung one
    assert [s.seq for s in (first, stale, again, recovered)] == [0, 1, 2, 3]
    assert SensorErrorKind.GPU_STALE not in [e.kind for e in recovered_errors]


def test_errors_in_a_sample_are_bounded() -> None:
    errors = [error(SensorErrorKind.PROC_READ, f"/proc/{i}/stat: unparsable") for i in range(100)]
    rendered = render(errors)
    assert len(rendered) == MAX_ERRORS_PER_SAMPLE
    assert rendered[-1] == error(SensorErrorKind.PROC_READ, "69 more errors not shown")


def test_run_loop_ticks_for_the_duration(handmade: str) -> None:
    sampler = Sampler(
        SamplerSettings(pod="ns/p", proc_root=handmade, socket_reader="proc", interval_s=0.05), NoGpuSource()
    )
    seqs: list[int] = []
    try:
        count = run_loop(sampler, lambda s, e, d: seqs.append(s.seq), threading.Event(), duration_s=0.2)
    finally:
        sampler.close()
    assert count == 4 and seqs == [0, 1, 2, 3]


def test_run_loop_stops_when_asked(handmade: str) -> None:
    sampler = Sampler(
        SamplerSettings(pod="ns/p", proc_root=handmade, socket_reader="proc", interval_s=10), NoGpuSource()
    )
    stop = threading.Event()
    timer = threading.Timer(0.2, stop.set)
    timer.start()
    started = time.monotonic()
    try:
        assert run_loop(sampler, lambda s, e, d: None, stop) == 1
    finally:
        sampler.close()
    assert time.monotonic() - started < 5
