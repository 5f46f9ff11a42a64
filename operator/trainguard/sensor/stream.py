"""Fan-out of samples to any number of readers, none of which can hold up the sampler or each other.

The sampler publishes each sample once, serialised once. Each reader of `/v1/samples` has its own
bounded queue; when a reader falls behind, its oldest lines are dropped (and counted), so a slow
or stalled client costs at most `queue_size` lines of memory and never blocks anyone.
"""

from __future__ import annotations

import collections
import operator
import threading
import time
from collections.abc import Callable

from pydantic import BaseModel

from trainguard.api.sample import Sample

_REUSED = ("processes", "listening", "connections", "unconnected")
"""The fields of a sample whose items the encoder serialises once and reuses while the item is."""


def _plan() -> list[tuple[str, frozenset[str]]]:
    """Sample's fields in declaration order (the order JSON has them in), runs of the others grouped."""
    plan: list[tuple[str, frozenset[str]]] = []
    for name in Sample.model_fields:
        if name in _REUSED:
            plan.append((name, frozenset()))
        elif plan and plan[-1][1]:
            plan[-1] = ("", plan[-1][1] | {name})
        else:
            plan.append(("", frozenset({name})))
    return plan


class SampleEncoder:
    """A sample as its JSON line, byte for byte `sample.model_dump_json(by_alias=True)`, but cheaper.

    Most processes and sockets are the very same objects tick after tick (the watchers reuse what did
    not change; the models are frozen). Each one's JSON is kept from the last call while it is still
    in the sample, and a list whose items are all the very same objects as at the last call is not even
    joined again: per tick, only what is new is serialised. Keep one encoder per stream of samples, and
    call it from one thread.
    """

    _PLAN = _plan()

    def __init__(self) -> None:
        self._lists: dict[str, tuple[list[BaseModel], dict[int, bytes], bytes]] = {}
        """field -> last call's (items, id(item) -> its JSON, the JSON array). The items are kept
        alive so that no other object can have their ids."""

    def encode(self, sample: Sample) -> bytes:
        """The sample's JSON (no newline)."""
        parts: list[bytes] = []
        for name, plain in self._PLAN:
            if plain:
                obj = sample.model_dump_json(by_alias=True, include=set(plain)).encode()
                if len(obj) > 2:
                    parts.append(obj[1:-1])
                continue
            items: list[BaseModel] = getattr(sample, name)
            last = self._lists.get(name)
            if last is not None and len(last[0]) == len(items) and all(map(operator.is_, last[0], items)):
                array = last[2]
            else:
                previous = last[1] if last is not None else {}
                fragments: dict[int, bytes] = {}
                for item in items:
                    key = id(item)
                    fragment = previous.get(key)
                    if fragment is None:
                        fragment = item.__pydantic_serializer__.to_json(item, by_alias=True)
                    fragments[key] = fragment
                array = b"[" + b",".join(fragments[id(item)] for item in items) + b"]"
                self._lists[name] = (list(items), fragments, array)
            alias = Sample.model_fields[name].alias or name
            parts.append(b'"' + alias.encode() + b'":' + array)
        return b"{" + b",".join(parts) + b"}"


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
        sign: Callable[[bytes], bytes] | None = None,
    ) -> None:
        """`sign`: turns a sample's JSON into its stream line (the authenticated protocol's signed line); without
        it a line is the JSON and a newline."""
        self._sign = sign
        self.queue_size = queue_size
        self.max_subscribers = max_subscribers
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._subscribers: set[Subscription] = set()
        self._latest: Sample | None = None
        self._latest_line: bytes | None = None
        self._published_at: float | None = None
        self.dropped_total = 0
        self._encoder = SampleEncoder()

    def publish(self, sample: Sample) -> None:
        """Serialise the sample once and queue it for every reader. Call it from one thread (the sampler's)."""
        encoded = self._encoder.encode(sample)
        line = self._sign(encoded) if self._sign is not None else encoded + b"\n"
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
