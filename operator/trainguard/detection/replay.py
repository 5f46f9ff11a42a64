"""Replaying recorded samples through one engine, with a clock that follows them.

The clock is set to each sample's time as it is fed; between two samples, and past the last one up
to `until`, `tick` runs once a second of trace time, as the operator's would. So a pod whose samples
stop while the replay goes on is found silent, and a sensor killed before the end of the replay
(`until`, by default the last sample's time) is `sensor.silent` there. The pure part of
`trainguard replay`; the command line (files, flags, printing) is `trainguard.cli.replay`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from trainguard.api.sample import Sample
from trainguard.api.v1alpha1 import Monitoring, Policy
from trainguard.detection.context import EngineContext
from trainguard.detection.engine import Engine, ManualClock
from trainguard.detection.violation import Decision

#: Seconds of trace time between two `Engine.tick` calls.
TICK_SECONDS = 1.0


def replay(
    policy: Policy,
    samples: Iterable[Sample],
    context: EngineContext,
    monitoring: Monitoring | None = None,
    until: float | None = None,
) -> list[Decision]:
    """Every decision the engine makes over the samples (in time order), each taken as coming from the
    pod it names (a recording cannot say which pod was dialled), ticking on to `until`."""
    clock = ManualClock()
    engine = Engine(policy, context, clock, monitoring)
    decisions: list[Decision] = []
    next_tick: float | None = None

    def advance(to: float) -> None:
        nonlocal next_tick
        if next_tick is None:
            next_tick = to
        while next_tick <= to:
            clock.set(max(clock.now, next_tick))
            decisions.extend(engine.tick(next_tick))
            next_tick += TICK_SECONDS

    last: float | None = None
    for sample in samples:
        advance(sample.ts)
        clock.set(max(clock.now, sample.ts))
        decisions.extend(engine.observe(sample.pod, sample))
        last = sample.ts if last is None else max(last, sample.ts)
    if last is not None and until is not None and until > last:
        advance(math.nextafter(until, math.inf))
    return decisions
