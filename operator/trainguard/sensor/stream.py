"""Fan-out of samples to any number of readers, none of which can hold up the sampler or each other.

The sampler publishes each sample once, serialised once. Each reader of `/v1/samples` has its own
bounded queue; when a reader falls behind, its oldest lines are dropped (and counted), so a slow
or stalled client costs at most `queue_size` lines of memory and never blocks anyone.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

from trainguard.api.sample import Sample


class Subscription:
    """One reader's queue of JSON lines: bounded, dropping the oldest when full."""

    def __init__(self, queue_size: int) -> None:
        self._lines: collections.deque[bytes] = collections.deque(maxlen=queue_size)
        self._ready = threading.Condition()
        self.dropped = 0
        self.closed = False

    def push(self, line: bytes) -> int:
        """Queue a line; returns how many were dropped to make room (0 or 1)."""
        with self._ready:
            dropped = 1 if len(self._lines) == self._lines.maxlen else 0
            self._lines.append(line)
            self.dropped += dropped
            self._ready.notify()
        return dropped

    def take(self, timeout: float) -> list[bytes]:
        """Every queued line, waiting up to timeout for the first; [] on timeout or when closed."""
        with self._ready:
            if not self._lines and not self.closed:
                self._ready.wait(timeout)
            lines = list(self._lines)
            self._lines.clear()
            return lines

    def close(self) -> None:
        with self._ready:
            self.closed = True
            self._ready.notify_all()


class SampleHub:
    """The latest sample and the readers of the stream."""

    def __init__(
        self,
        *,
        queue_size: int = 16,
        max_subscribers: int = 64,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.queue_size = queue_size
        self.max_subscribers = max_subscribers
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._subscribers: set[Subscription] = set()
        self._latest: Sample | None = None
        self._latest_line: bytes | None = None
        self._published_at: float | None = None
        self.dropped_total = 0

    def publish(self, sample: Sample) -> None:
        line = sample.model_dump_json(by_alias=True).encode() + b"\n"
        with self._lock:
            self._latest = sample
            self._latest_line = line
            self._published_at = self._monotonic()
            subscribers = list(self._subscribers)
        dropped = sum(sub.push(line) for sub in subscribers)
        if dropped:
            with self._lock:
                self.dropped_total += dropped

    @property
    def latest(self) -> Sample | None:
        with self._lock:
            return self._latest

    @property
    def latest_line(self) -> bytes | None:
        with self._lock:
            return self._latest_line

    def seconds_since_publish(self) -> float | None:
        """Seconds since the last sample, None before the first."""
        with self._lock:
            at = self._published_at
        return None if at is None else self._monotonic() - at

    def subscribe(self) -> Subscription | None:
        """A new reader, starting with the latest sample; None when there are max_subscribers already."""
        with self._lock:
            if len(self._subscribers) >= self.max_subscribers:
                return None
            sub = Subscription(self.queue_size)
            if self._latest_line is not None:
                sub.push(self._latest_line)
            self._subscribers.add(sub)
            return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subscribers.discard(sub)
        sub.close()

    @property
    def subscriber_count(self) -> int:
        with self._lock:
            return len(self._subscribers)

    def close(self) -> None:
        """End every stream (shutdown)."""
        with self._lock:
            subscribers = list(self._subscribers)
            self._subscribers.clear()
        for sub in subscribers:
            sub.close()
