"""One sample per tick, on time whatever /proc and NVML do.

Two workers, one for /proc (processes, fds, sockets) and one for the GPU source, each run one
collection at a time. A tick starts both (unless one is still busy with an earlier collection),
waits for them until its deadline, and builds the sample from what arrived. A collection that
overruns is not waited for: the previous state is emitted again with a `*_stale` error entry, and
the late result is picked up by a later tick. A hung NVML call thus costs one stuck thread, never a
stalled stream.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from trainguard import __version__
from trainguard.api.sample import Connection, ListeningSocket, ProcessInfo, Sample, SensorInfo, UnconnectedSocket
from trainguard.sensor import processes, sockdiag, sockets
from trainguard.sensor.attribution import GpuAttributor
from trainguard.sensor.errors import SensorError, SensorErrorKind, error, render
from trainguard.sensor.gpu import GpuReading, GpuSource

T = TypeVar("T")


@dataclass(frozen=True)
class SamplerSettings:
    """How the sensor samples. Defaults are the CLI's."""

    pod: str
    """namespace/name of the pod, written into every sample."""
    interval_s: float = 1.0
    """Seconds between samples (`--interval`)."""
    deadline_ratio: float = 0.5
    """A tick waits for its collections at most this fraction of the interval; then it emits stale state."""
    proc_root: str = "/proc"
    """Where /proc is (`--proc-root`); tests point it at a fake tree."""
    max_processes: int = 4096
    """At most this many processes per sample (`--max-processes`); more is a `process_cap` error."""
    max_connections: int = 4096
    """At most this many listening sockets, as many connections and as many unconnected sockets per sample
    (`--max-connections`)."""
    socket_reader: str = "netlink"
    """`netlink` (sock_diag, /proc/net where refused) or `proc` (/proc/net only) (`--socket-reader`)."""
    container_names: dict[str, str] = field(default_factory=dict)
    """Container id -> name in the pod (`--container-name NAME=ID`); the sensor cannot ask the API server."""
    refresh_every: int = 20
    """Every process is re-read in full (status, cmdline, fd links) at least once per this many ticks."""
    max_fds: int = 65536
    """At most this many fd links are read per sample (a process can open a million files)."""
    own_pid: int = field(default_factory=os.getpid)
    """The sensor's pid: NVML opens /dev/nvidia* too, so it never counts as a GPU holder."""

    @property
    def deadline_s(self) -> float:
        return self.interval_s * self.deadline_ratio


@dataclass(frozen=True, slots=True)
class HostState:
    """What /proc said at one collection."""

    processes: list[processes.ProcessRecord]
    device_holders: dict[str, set[int]]
    listening: list[ListeningSocket]
    connections: list[Connection]
    unconnected: list[UnconnectedSocket]
    reader: str
    errors: list[SensorError]


class HostCollector:
    """One collection of /proc per call: sockets first, so the process scan knows which inodes to find."""

    def __init__(self, settings: SamplerSettings) -> None:
        self._processes = processes.ProcessWatcher(
            settings.proc_root,
            max_processes=settings.max_processes,
            max_fds=settings.max_fds,
            exclude_device_holder=settings.own_pid,
            refresh_every=settings.refresh_every,
            container_names=settings.container_names,
            sensor_pid=settings.own_pid,
        )
        self._sockets = sockdiag.SocketSource(settings.proc_root, prefer=settings.socket_reader)
        self._book = sockets.SocketBook(max_sockets=settings.max_connections)

    def close(self) -> None:
        self._processes.close()
        self._sockets.close()

    def collect(self) -> HostState:
        read = self._sockets.read()
        scan = self._processes.scan(read.inodes())
        net = self._book.classify(read, scan.socket_owners)
        return HostState(
            processes=scan.processes,
            device_holders=scan.device_holders,
            listening=net.listening,
            connections=net.connections,
            unconnected=net.unconnected,
            reader=read.reader,
            errors=scan.errors + net.errors,
        )


class DeadlineJob(Generic[T]):
    """Runs `collect` in its own thread, one call at a time, and waits for it no longer than a deadline."""

    def __init__(self, name: str, collect: Callable[[], T], finalize: Callable[[], None] | None = None) -> None:
        self._collect = collect
        self._finalize = finalize
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sensor-{name}")
        self._future: Future[T] | None = None
        self.last: T | None = None

    def start(self) -> None:
        """Start a collection unless one is still running."""
        if self._future is not None and not self._future.done():
            return
        if self._future is not None:
            self._harvest(self._future)
        self._future = self._pool.submit(self._collect)

    def wait(self, deadline: float, monotonic: Callable[[], float] = time.monotonic) -> tuple[T | None, bool]:
        """(latest result, fresh): fresh is False when the running collection missed the deadline."""
        future = self._future
        if future is None:
            return self.last, False
        try:
            future.result(timeout=max(0.0, deadline - monotonic()))
        except FutureTimeout:
            return self.last, False
        except Exception:  # collect() is written not to raise; if it does, the state goes stale
            self._future = None
            return self.last, False
        self._harvest(future)
        self._future = None
        return self.last, True

    def _harvest(self, future: Future[T]) -> None:
        if future.exception() is None:
            self.last = future.result()

    def close(self) -> None:
        """Stop; `finalize` runs in the worker after any collection still running (never beside it)."""
        if self._finalize is not None:
            self._pool.submit(self._finalize)
        self._pool.shutdown(wait=False)


class Sampler:
    """Builds the samples: `tick()` returns the next one within the deadline."""

    def __init__(
        self,
        settings: SamplerSettings,
        gpu_source: GpuSource,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._gpu_source = gpu_source
        self._clock = clock
        self._monotonic = monotonic
        self._seq = 0
        self._attributor = GpuAttributor()
        host = HostCollector(settings)
        self._host = DeadlineJob("proc", host.collect, host.close)
        self._gpu = DeadlineJob("gpu", gpu_source.read)

    def tick(self) -> tuple[Sample, list[SensorError]]:
        """The next sample, and its errors (all of them; the sample carries at most a bounded number)."""
        started = self._monotonic()
        ts = self._clock()
        deadline = started + self.settings.deadline_s
        self._host.start()
        self._gpu.start()
        host, host_fresh = self._host.wait(deadline, self._monotonic)
        reading, gpu_fresh = self._gpu.wait(deadline, self._monotonic)
        errors: list[SensorError] = []
        if not host_fresh:
            errors.append(
                error(
                    SensorErrorKind.PROC_STALE,
                    f"/proc collection overran {self.settings.deadline_s:.3g}s: "
                    + ("previous processes and sockets repeated" if host else "no process data yet"),
                )
            )
        if not gpu_fresh:
            errors.append(
                error(
                    SensorErrorKind.GPU_STALE,
                    f"GPU collection overran {self.settings.deadline_s:.3g}s: "
                    + ("previous GPU state repeated" if reading else "no GPU data yet"),
                )
            )
        reading = reading or GpuReading()
        errors.extend(reading.errors)
        gpus = reading.gpus
        process_infos: list[ProcessInfo] = []
        listening: list[ListeningSocket] = []
        connections: list[Connection] = []
        unconnected: list[UnconnectedSocket] = []
        reader = "none"
        if host is not None:
            errors.extend(host.errors)
            gpus, attribution_errors = self._attributor.attribute(
                reading.gpus, reading.minor_numbers, host.device_holders, host.processes
            )
            errors.extend(attribution_errors)
            process_infos = [p.info for p in host.processes]
            listening = host.listening
            connections = host.connections
            unconnected = host.unconnected
            reader = host.reader
        sample = Sample(
            ts=ts,
            pod=self.settings.pod,
            seq=self._seq,
            gpus=gpus,
            processes=process_infos,
            listening=listening,
            connections=connections,
            unconnected=unconnected,
            sensor=SensorInfo(version=__version__, reader=reader, errors=render(errors)),
        )
        self._seq += 1
        return sample, errors

    def close(self) -> None:
        self._host.close()
        self._gpu.close()
        self._gpu_source.close()


def run_loop(
    sampler: Sampler,
    emit: Callable[[Sample, list[SensorError], float], None],
    stop: threading.Event,
    *,
    duration_s: float | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> int:
    """Tick every interval until `stop` is set (or duration_s has passed); returns how many samples.

    `emit(sample, errors, seconds_it_took)` is called once per tick. Ticks are on a fixed grid from the
    start; a tick that ran late does not cause a burst: missed grid points are skipped.
    """
    interval = sampler.settings.interval_s
    start = monotonic()
    next_tick = start
    emitted = 0
    while not stop.is_set():
        began = monotonic()
        sample, errors = sampler.tick()
        emit(sample, errors, monotonic() - began)
        emitted += 1
        next_tick += interval
        now = monotonic()
        if next_tick < now:
            next_tick = now + interval - ((now - start) % interval)
        if duration_s is not None and next_tick - start >= duration_s - 1e-9:
            break
        stop.wait(next_tick - now)
    return emitted
