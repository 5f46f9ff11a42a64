"""DCGM readings for the guard: one query per job per interval, in threads of their own, cached with a bound age.

    guard._sync (detection thread) --want(job, url, namespace, pods)--> DcgmCache
    DcgmPoller thread: every job due --> executor (a few threads): DcgmSource.read_pods --> DcgmCache.done / failed
    guard, per sample (detection thread): DcgmCache.readings(job, pod, now) --> merge_dcgm --> Engine.observe

Why so: a sample arrives per pod per second; Prometheus' series change once per scrape interval (dcgm-exporter
collects every 30 s by default, clusters scrape every 15-30 s). Asking per sample would be a thousand HTTP requests a
second for nothing new; asking once per job per interval is one request per job whatever its size, and the detection
thread never waits on HTTP: it reads the cache (a dict lookup under a lock). A reading is merged while its query is
at most `max_age_s` old (and each series in it was at most `DcgmSource.max_age_s` old when asked): Prometheus down
for longer than that, and the samples go to the engine as the sensor sent them.

Pure where it can be: `DcgmCache` takes the time as an argument (unit-tested without threads or HTTP); `DcgmPoller`
adds the threads and the source.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from trainguard.sources.dcgm import DcgmGpu, DcgmSource, GpuKey, PrometheusError

log = logging.getLogger("trainguard.dcgm")

#: A job as the guard names it: (namespace, name).
Job = tuple[str, str]
NOTHING: Mapping[GpuKey, DcgmGpu] = {}


@dataclass(frozen=True)
class DcgmSettings:
    """How often and how long the operator asks each job's Prometheus for its pods' DCGM series."""

    #: Seconds between two queries for one job. Default 10: below the usual scrape interval (15-30 s) so that a new
    #: scrape is seen within a third of the next, and one request per job every 10 s.
    interval_s: float = 10.0
    #: Seconds a successful query's readings are merged into samples. Default 30: three missed queries (Prometheus
    #: down or slow) and the samples carry only the sensor's readings again, rather than a profile that old.
    max_age_s: float = 30.0
    #: Seconds one query may take (connect and answer); past it the query failed (Prometheus "slow" is "down").
    timeout_s: float = 5.0
    #: Seconds a series may be old in Prometheus' answer (an exporter that stopped still has five minutes of
    #: lookback): passed to `DcgmSource.max_age_s`.
    series_max_age_s: float = 30.0
    #: Queries in flight at once (over all jobs); one per job at most.
    workers: int = 4


@dataclass
class _Entry:
    url: str
    namespace: str
    pods: frozenset[str]
    #: Pod name -> its GPUs, from the last successful query.
    readings: dict[str, dict[GpuKey, DcgmGpu]] = field(default_factory=dict)
    #: When the last successful query was asked (the cache's clock); None before the first.
    read_at: float | None = None
    #: The last query's failure, or None when it succeeded (or none ran yet).
    error: str | None = None
    next_at: float = 0.0
    in_flight: bool = False


@dataclass(frozen=True)
class Query:
    """A query that is due: ask `url` for `pods` of `namespace`, then hand it back to `done` or `failed`."""

    job: Job
    url: str
    namespace: str
    pods: frozenset[str]
    asked_at: float


class DcgmCache:
    """Which job's query is due, and which readings are fresh enough to merge. Thread-safe; the time is passed in."""

    def __init__(self, settings: DcgmSettings) -> None:
        self.settings = settings
        self._jobs: dict[Job, _Entry] = {}
        self._lock = threading.Lock()

    def want(self, job: Job, url: str, namespace: str, pods: frozenset[str]) -> None:
        """The job's Prometheus and its running pods now (at every sync). A new URL drops what the old one said."""
        with self._lock:
            entry = self._jobs.get(job)
            if entry is None or entry.url != url or entry.namespace != namespace:
                self._jobs[job] = _Entry(url, namespace, pods)
                return
            entry.pods = pods
            for gone in set(entry.readings) - pods:
                entry.readings.pop(gone, None)

    def forget(self, job: Job) -> None:
        with self._lock:
            self._jobs.pop(job, None)

    def jobs(self) -> list[Job]:
        with self._lock:
            return list(self._jobs)

    def due(self, now: float) -> list[Query]:
        """The queries to ask now: jobs with pods whose next query time has come and none in flight. Each is marked
        in flight until `done` or `failed`."""
        out = []
        with self._lock:
            for job, entry in self._jobs.items():
                if entry.in_flight or not entry.pods or now < entry.next_at:
                    continue
                entry.in_flight = True
                entry.next_at = now + self.settings.interval_s
                out.append(Query(job, entry.url, entry.namespace, entry.pods, now))
        return out

    def done(self, query: Query, readings: Mapping[str, Mapping[GpuKey, DcgmGpu]]) -> bool:
        """The query answered; True when the job's Prometheus was failing before (it is back)."""
        with self._lock:
            entry = self._current(query)
            if entry is None:
                return False
            entry.in_flight = False
            entry.readings = {pod: dict(gpus) for pod, gpus in readings.items() if pod in entry.pods}
            entry.read_at = query.asked_at
            was, entry.error = entry.error, None
            return was is not None

    def failed(self, query: Query, error: str) -> bool:
        """The query failed; True when the job's Prometheus was not failing before (a new outage). The readings of
        the last successful query stay until they are `max_age_s` old."""
        with self._lock:
            entry = self._current(query)
            if entry is None:
                return False
            entry.in_flight = False
            was, entry.error = entry.error, error
            return was is None

    def readings(self, job: Job, pod: str, now: float) -> Mapping[GpuKey, DcgmGpu]:
        """The pod's GPUs as DCGM last said, when that query is at most `max_age_s` old; else nothing."""
        with self._lock:
            entry = self._jobs.get(job)
            if entry is None or entry.read_at is None or now - entry.read_at > self.settings.max_age_s:
                return NOTHING
            return entry.readings.get(pod, NOTHING)

    def error(self, job: Job) -> str | None:
        """Why the job's last query failed, or None."""
        with self._lock:
            entry = self._jobs.get(job)
            return None if entry is None else entry.error

    def failing(self) -> int:
        with self._lock:
            return sum(1 for e in self._jobs.values() if e.error is not None)

    def _current(self, query: Query) -> _Entry | None:
        entry = self._jobs.get(query.job)
        if entry is None or entry.url != query.url or entry.namespace != query.namespace:
            return None  # forgotten, or asked of a Prometheus the job no longer names
        return entry


#: Told of every change of a job's Prometheus: (job, the error) when it starts failing, (job, None) when it is back.
OnChange = Callable[[Job, str | None], None]
#: Told of every query: its outcome ("ok" or "failed") and its seconds.
OnQuery = Callable[[str, float], None]


class DcgmPoller:
    """Asks each wanted job's Prometheus every `interval_s`, in `workers` threads; `cache` is what the guard reads."""

    def __init__(
        self,
        settings: DcgmSettings,
        on_change: OnChange | None = None,
        on_query: OnQuery | None = None,
        source: Callable[[str], DcgmSource] | None = None,
    ) -> None:
        self.settings = settings
        self.cache = DcgmCache(settings)
        self._on_change = on_change
        self._on_query = on_query
        self._source = source or (
            lambda url: DcgmSource(url, timeout_s=settings.timeout_s, max_age_s=settings.series_max_age_s)
        )
        self._sources: dict[str, DcgmSource] = {}
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=max(1, settings.workers), thread_name_prefix="dcgm")
        self._thread = threading.Thread(target=self._loop, name="dcgm-poller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> None:
        tick = min(0.25, self.settings.interval_s / 4)
        while not self._stop.wait(tick):
            try:
                for query in self.cache.due(time.monotonic()):
                    self._pool.submit(self._ask, query)
            except RuntimeError:  # the pool was shut down meanwhile
                return

    def _ask(self, query: Query) -> None:
        started = time.monotonic()
        try:
            source = self._sources.get(query.url)
            if source is None:
                source = self._sources[query.url] = self._source(query.url)
            readings = source.read_pods(query.namespace, sorted(query.pods))
        except (PrometheusError, ValueError) as error:
            self._report("failed", started)
            if self.cache.failed(query, str(error)):
                log.warning(
                    "DCGM readings of %s/%s not read (detection goes on with the sensor's own): %s", *query.job, error
                )
                self._changed(query.job, str(error))
            return
        except Exception as error:  # a bug here must not stop this job's queries for good
            log.exception("DCGM query of %s/%s", *query.job)
            self._report("failed", started)
            if self.cache.failed(query, f"{type(error).__name__}: {error}"):
                self._changed(query.job, str(error))
            return
        self._report("ok", started)
        if self.cache.done(query, readings):
            log.info("DCGM readings of %s/%s read again from %s", *query.job, query.url)
            self._changed(query.job, None)

    def _report(self, outcome: str, started: float) -> None:
        if self._on_query is not None:
            self._on_query(outcome, time.monotonic() - started)

    def _changed(self, job: Job, error: str | None) -> None:
        if self._on_change is not None:
            try:
                self._on_change(job, error)
            except Exception:
                log.exception("DCGM availability of %s/%s", *job)
