"""What the sensor could not see: structured entries of a closed set of kinds.

The kinds and the entry are the contract's (`trainguard.api.sample.SensorErrorKind`, `SensorError`):
one enum for the sample, the metric label and the engine. Every sample carries its errors in
`sensor.errors`, and `trainguard_sensor_errors_total{kind=...}` counts them.
"""

from __future__ import annotations

from trainguard.api.sample import SensorError, SensorErrorKind

__all__ = ["MAX_ERRORS_PER_SAMPLE", "SensorError", "SensorErrorKind", "error", "render"]

MAX_ERRORS_PER_SAMPLE = 32
"""At most this many entries go into one sample; the last one then says how many were left out."""


def error(kind: SensorErrorKind, message: str) -> SensorError:
    """One entry."""
    return SensorError(kind=kind, message=message)


def render(errors: list[SensorError]) -> list[SensorError]:
    """The `sensor.errors` entries: at most MAX_ERRORS_PER_SAMPLE, the last one saying how many were left out
    (with the kind of the last entry left out, so that a flood of one kind still names it)."""
    if len(errors) <= MAX_ERRORS_PER_SAMPLE:
        return list(errors)
    shown = errors[: MAX_ERRORS_PER_SAMPLE - 1]
    left = len(errors) - len(shown)
    return [*shown, error(errors[-1].kind, f"{left} more errors not shown")]
