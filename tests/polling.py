"""Poll the cluster for a state with a deadline, instead of sleeping and hoping."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    message: str,
    interval: float = 0.1,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``predicate`` until it returns something truthy and return that.

    Fails the test with ``message`` (and the last value or error seen) after ``timeout`` seconds. Exceptions
    raised by the predicate propagate unless listed in ``ignoring`` (e.g. a server that is not listening yet).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value: T | BaseException = predicate()
        except ignoring as error:
            value = error
        if value and not isinstance(value, BaseException):
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} (not within {timeout:g} s; last value: {value!r})")
        time.sleep(interval)
