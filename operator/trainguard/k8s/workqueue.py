"""A work queue of job keys, as in client-go: a key queued many times is reconciled once, never by two workers
at the same time, and again after its current run if it was queued meanwhile."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

Key = tuple[str, str]  # (namespace, name)

log = logging.getLogger("trainguard.operator")


class WorkQueue:
    """Keys to reconcile, deduplicated; `workers` threads run `work(key)` for each."""

    def __init__(self, work: Callable[[Key], None], workers: int = 4, name: str = "reconcile") -> None:
        self._work = work
        self._lock = threading.Condition()
        self._queue: deque[Key] = deque()
        self._queued: set[Key] = set()
        self._running: set[Key] = set()
        self._again: set[Key] = set()
        self._stopped = False
        self._threads = [
            threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True) for i in range(max(1, workers))
        ]
        for t in self._threads:
            t.start()

    def add(self, key: Key) -> None:
        with self._lock:
            if key in self._running:
                self._again.add(key)
            elif key not in self._queued:
                self._queued.add(key)
                self._queue.append(key)
                self._lock.notify()

    def add_after(self, key: Key, delay_s: float) -> None:
        """Queue the key again after a delay (a reconcile that failed for a reason worth retrying)."""
        timer = threading.Timer(delay_s, self.add, (key,))
        timer.daemon = True
        timer.start()

    def __len__(self) -> int:
        with self._lock:
            return len(self._queue) + len(self._running)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._lock.notify_all()
        for t in self._threads:
            t.join(timeout=10)

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopped:
                    self._lock.wait()
                if self._stopped:
                    return
                key = self._queue.popleft()
                self._queued.discard(key)
                self._running.add(key)
            try:
                self._work(key)
            except Exception:  # a bug in one reconcile must not take a worker away from all the others
                log.exception("reconcile of %s/%s raised", *key, extra={"job": f"{key[0]}/{key[1]}"})
            finally:
                with self._lock:
                    self._running.discard(key)
                    if key in self._again:
                        self._again.discard(key)
                        if key not in self._queued:
                            self._queued.add(key)
                            self._queue.append(key)
                            self._lock.notify()
