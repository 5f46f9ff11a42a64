"""Poll the cluster for a state with a deadline, instead of sleeping and hoping."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float, message: str, interval: float = 0.1) -> T:
    """Call ``predicate`` until it returns something truthy and return that.

    Fails the test with ``message`` (and the last value seen) after ``timeout`` seconds. Exceptions raised by the
    predicate propagate: a predicate that expects an object to be absent for a while must handle that itself.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} (not within {timeout:g} s; last value: {value!r})")
        time.sleep(interval)
