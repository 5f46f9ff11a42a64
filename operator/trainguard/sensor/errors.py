"""What the sensor could not see: a bounded set of kinds, each with a human message.

Every sample carries its errors in `sensor.errors` as `"<kind>: <message>"` strings, and
`trainguard_sensor_errors_total{kind=...}` counts them; the kind is the label, so it is an enum.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ErrorKind(enum.StrEnum):
    """The kinds of error, a closed set (they are a metric label)."""

    GPU_UNAVAILABLE = "gpu_unavailable"
    """No NVML: no driver, no GPU, or the library failed to initialise."""
    GPU_READ = "gpu_read"
    """An NVML query failed for one GPU."""
    GPU_STALE = "gpu_stale"
    """The GPU collection overran its deadline; the previous GPU state was emitted."""
    PROC_READ = "proc_read"
    """A /proc file could not be read or parsed."""
    PROC_PERMISSION = "proc_permission"
    """The sensor may not read some processes' open files (another uid, no capability)."""
    PROC_STALE = "proc_stale"
    """The /proc collection overran its deadline; the previous process and socket state was emitted."""
    NET_READ = "net_read"
    """A /proc/net table could not be read or a line of it parsed."""
    PROCESS_CAP = "process_cap"
    """More processes than --max-processes: the rest are not in the sample."""
    CONNECTION_CAP = "connection_cap"
    """More sockets than --max-connections: the rest are not in the sample."""
    FD_CAP = "fd_cap"
    """More open files than the per-sample scan budget: some owners stay unknown."""
    ATTRIBUTION = "attribution"
    """Some GPU processes could not be tied to a process of the pod."""


@dataclass(frozen=True, slots=True)
class SensorError:
    """One thing the sensor could not see this tick."""

    kind: ErrorKind
    message: str

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.message}"


MAX_ERRORS_PER_SAMPLE = 32
"""At most this many error strings go into one sample; the rest are summarised in one line."""


def render(errors: list[SensorError]) -> list[str]:
    """The `sensor.errors` strings: at most MAX_ERRORS_PER_SAMPLE, then one line saying how many were left out."""
    if len(errors) <= MAX_ERRORS_PER_SAMPLE:
        return [str(e) for e in errors]
    shown = [str(e) for e in errors[: MAX_ERRORS_PER_SAMPLE - 1]]
    left = len(errors) - len(shown)
    shown.append(f"{errors[-1].kind.value}: {left} more errors not shown")
    return shown
