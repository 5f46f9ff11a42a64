"""The guard's DCGM cache: which job is asked when, and which readings are fresh enough to merge (the time is an
argument: no threads, no HTTP). The poller's threads against a real Prometheus: tests/integration/test_dcgm_guard.py."""

from __future__ import annotations

from trainguard.api.sample import GpuProfile
from trainguard.sources import DcgmCache, DcgmGpu, DcgmSettings, GpuKey

JOB = ("agents", "train")
URL = "http://prometheus.monitoring:9090"
SETTINGS = DcgmSettings(interval_s=10.0, max_age_s=30.0)


def gpus(tensor: float) -> dict[GpuKey, DcgmGpu]:
    key = GpuKey("GPU-a")
    return {key: DcgmGpu(key, GpuProfile(tensor_active=tensor))}


def test_one_query_per_job_per_interval_never_two_at_once() -> None:
    cache = DcgmCache(SETTINGS)
    cache.want(JOB, URL, "agents", frozenset({"w-0", "w-1"}))
    cache.want(("agents", "idle"), URL, "agents", frozenset())  # no running pods: nothing to ask
    [q] = cache.due(100.0)
    assert (q.job, q.url, q.namespace, q.pods) == (JOB, URL, "agents", frozenset({"w-0", "w-1"}))
    assert cache.due(100.0) == [] and cache.due(200.0) == []  # in flight: not asked again, however long it takes
    cache.done(q, {"w-0": gpus(0.5)})
    assert cache.due(109.9) == []  # the interval counts from when it was asked
    [again] = cache.due(210.0)
    assert again.job == JOB


def test_readings_are_merged_while_the_query_is_at_most_max_age_old() -> None:
    cache = DcgmCache(SETTINGS)
    cache.want(JOB, URL, "agents", frozenset({"w-0", "w-1"}))
    assert cache.readings(JOB, "w-0", 100.0) == {}  # never read
    [q] = cache.due(100.0)
    cache.done(q, {"w-0": gpus(0.5), "someone-else": gpus(0.9)})
    assert cache.readings(JOB, "w-0", 100.0) == gpus(0.5)
    assert cache.readings(JOB, "w-1", 100.0) == {}  # no series for it
    assert cache.readings(JOB, "someone-else", 100.0) == {}  # not the job's pod
    assert cache.readings(JOB, "w-0", 130.0) == gpus(0.5)
    assert cache.readings(JOB, "w-0", 130.1) == {}  # older than max_age_s: the sensor's readings alone
    assert cache.readings(("agents", "other"), "w-0", 100.0) == {}


def test_a_failure_is_reported_once_and_the_last_readings_age_out() -> None:
    cache = DcgmCache(SETTINGS)
    cache.want(JOB, URL, "agents", frozenset({"w-0"}))
    [q] = cache.due(100.0)
    assert cache.done(q, {"w-0": gpus(0.5)}) is False  # nothing to recover from
    [q] = cache.due(110.0)
    assert cache.failed(q, "connection refused") is True  # a new outage: said once
    assert cache.error(JOB) == "connection refused" and cache.failing() == 1
    assert cache.readings(JOB, "w-0", 120.0) == gpus(0.5)  # the last good answer, still young enough
    [q] = cache.due(120.0)
    assert cache.failed(q, "timed out") is False  # the same outage
    assert cache.error(JOB) == "timed out"
    assert cache.readings(JOB, "w-0", 130.5) == {}
    [q] = cache.due(130.5)
    assert cache.done(q, {"w-0": gpus(0.1)}) is True  # back
    assert cache.error(JOB) is None and cache.failing() == 0
    assert cache.readings(JOB, "w-0", 131.0) == gpus(0.1)


def test_pods_that_left_and_a_new_url_drop_what_was_read() -> None:
    cache = DcgmCache(SETTINGS)
    cache.want(JOB, URL, "agents", frozenset({"w-0", "w-1"}))
    [q] = cache.due(100.0)
    cache.done(q, {"w-0": gpus(0.5), "w-1": gpus(0.6)})
    cache.want(JOB, URL, "agents", frozenset({"w-1"}))
    assert cache.readings(JOB, "w-0", 101.0) == {} and cache.readings(JOB, "w-1", 101.0) == gpus(0.6)
    [q] = cache.due(110.0)
    cache.want(JOB, "http://elsewhere:9090", "agents", frozenset({"w-1"}))
    assert cache.readings(JOB, "w-1", 111.0) == {}  # the old Prometheus' word is not the new one's
    assert cache.done(q, {"w-1": gpus(0.7)}) is False  # an answer from the old URL is dropped
    assert cache.readings(JOB, "w-1", 111.0) == {}
    [q] = cache.due(111.0)
    assert q.url == "http://elsewhere:9090"
    cache.forget(JOB)
    assert cache.done(q, {"w-1": gpus(0.7)}) is False and cache.jobs() == []
