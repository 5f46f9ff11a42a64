"""The work queue: a key queued many times runs once, never on two workers at once, and again if queued while
running."""

from __future__ import annotations

import threading
import time

from tests.polling import wait_for
from trainguard.k8s.workqueue import Key, WorkQueue


def test_a_key_queued_while_queued_runs_once_and_while_running_runs_again() -> None:
    runs: list[Key] = []
    gate = threading.Event()
    concurrent = {"now": 0, "max": 0}
    lock = threading.Lock()

    def work(key: Key) -> None:
        with lock:
            concurrent["now"] += 1
            concurrent["max"] = max(concurrent["max"], concurrent["now"])
        gate.wait(5)
        with lock:
            runs.append(key)
            concurrent["now"] -= 1

    queue = WorkQueue(work, workers=4)
    try:
        queue.add(("ns", "a"))
        wait_for(lambda: concurrent["now"] == 1, 5, "the first run did not start")
        for _ in range(10):  # while it runs: queued once more, not ten times, and not run beside it
            queue.add(("ns", "a"))
        time.sleep(0.2)
        assert concurrent["max"] == 1
        gate.set()
        wait_for(lambda: len(runs) == 2 and len(queue) == 0, 5, "the second run did not happen")
        time.sleep(0.2)
        assert runs == [("ns", "a"), ("ns", "a")] and concurrent["max"] == 1
    finally:
        gate.set()
        queue.stop()


def test_different_keys_run_side_by_side() -> None:
    started = threading.Barrier(3, timeout=5)

    def work(key: Key) -> None:
        started.wait()

    queue = WorkQueue(work, workers=3)
    try:
        for name in "abc":
            queue.add(("ns", name))
        wait_for(lambda: len(queue) == 0, 5, "three keys did not run at once on three workers")
    finally:
        queue.stop()


def test_a_work_item_that_raises_does_not_take_its_worker_away() -> None:
    done: list[Key] = []

    def work(key: Key) -> None:
        if key[1] == "bad":
            raise KeyError("a bug")
        done.append(key)

    queue = WorkQueue(work, workers=1)
    try:
        queue.add(("ns", "bad"))
        queue.add(("ns", "good"))
        wait_for(lambda: done == [("ns", "good")], 5, "the only worker died with the bad item")
    finally:
        queue.stop()
