#!/usr/bin/env python3
"""Detection engine throughput: samples evaluated per second on one core, and peak memory.

    .venv/bin/python bench/detection.py                 # a day of 1 Hz telemetry for 100 pods (8.64 M samples)
    .venv/bin/python bench/detection.py --samples 200000
    .venv/bin/python bench/detection.py --samples 200000 --fresh   # every sample parsed from its own line

The samples are shaped like the example traces: a data-parallel worker with two GPUs, six
processes, four listeners and eight connections (NCCL ring, rendezvous, DNS, the object store,
the operator reading the sensor), DCGM metrics, utilization and power varying per sample. One
pod in a hundred keeps an undeclared listener open, so the de-duplication path runs too, and
`tick` runs once per simulated second.

What is measured, in CPU time of this process (so that other work on a shared machine does not
count; the wall-clock elapsed time is printed too):

- **evaluate only**: `Engine.observe` and `Engine.tick` over the whole stream. The stream is made
  on the fly, one tick (one sample per pod) at a time, by copying one parsed sample per pod with
  a new time, seq, DCGM metrics and GPU readings (see `stream`); making it is not timed, and
  nothing is held beyond a tick. With `--fresh`, every sample is parsed from its own JSON line
  instead (nothing shared between samples, as the operator gets them; slower to make).
- **parse only**: `Sample.model_validate_json` (the operator's edge) on `--parse-samples` JSON
  lines of the same shape (the parse rate does not depend on the length of the run).
- **parse + evaluate**: measured, not derived: each of those lines parsed and at once observed
  by a fresh engine, as the operator does, so the engine sees freshly parsed objects.

Peak memory is the process's maximum resident set size, and a pure-Python yardstick (a million
dict inserts) is printed so that figures from different machines can be compared.

The goal is at least 100,000 samples per second for evaluation.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import random
import resource
import sys
import time
from collections.abc import Iterator

from trainguard.api.sample import GpuSample, Sample
from trainguard.api.v1alpha1 import (
    Debounce,
    EgressRule,
    EnforcementPolicy,
    GpuPolicy,
    NetworkPolicySpec,
    Policy,
    PortSpec,
)
from trainguard.detection.engine import Engine, ManualClock

GOAL = 100_000
DAY_SAMPLES = 86_400 * 100
T0 = 1767225600.0
GIB = 1024**3

POLICY = Policy(
    network=NetworkPolicySpec(
        egress=[EgressRule(cidr="203.0.113.0/24", ports=[PortSpec(port=443)])],
        listen_ports=[29500],
    ),
    gpu=GpuPolicy(allowed_processes=["python*", "torchrun"], max_power_watts=700, max_memory_bytes=80 * GIB),
    enforcement=EnforcementPolicy(debounce=Debounce(samples=3)),
)


@functools.cache
def template(rank: int, pods: int) -> str:
    """A JSON line with %-placeholders for ts, seq and four GPU readings."""
    ip = f"10.{rank // 250}.{rank % 250}.10"
    nxt = f"10.{(rank + 1) % pods // 250}.{(rank + 1) % pods % 250}.10"
    prv = f"10.{(rank - 1) % pods // 250}.{(rank - 1) % pods % 250}.10"
    extra_listen = ',{"proto":"tcp","address":"0.0.0.0","port":8081,"pid":733}' if rank % 100 == 99 else ""
    gpus = ",".join(
        f'{{"index":{i},"uuid":"GPU-{rank:04d}-{i}","utilization":%(u{i}).2f,"memoryUsedBytes":{63 * GIB},'
        f'"memoryTotalBytes":{80 * GIB},"powerWatts":%(p{i}).1f,"smClockMHz":1980,"processes":[{{"pid":{48213 + i},'
        f'"name":"python3","cmdline":"python3 -u train.py --local-rank {i}","usedMemoryBytes":{62 * GIB}}}]}}'
        for i in range(2)
    )
    procs = ",".join(
        [
            '{"pid":1,"ppid":0,"name":"torchrun","cmdline":"torchrun --nproc-per-node 2 train.py","uid":1000}',
            *(
                f'{{"pid":{27 + i},"ppid":1,"name":"python3","cmdline":"python3 -u train.py --local-rank {i}",'
                '"uid":1000}'
                for i in range(2)
            ),
            *(
                f'{{"pid":{60 + i},"ppid":{27 + i},"name":"python3","cmdline":"python3 -u train.py --local-rank {i}"}}'
                for i in range(2)
            ),
            '{"pid":900,"ppid":0,"name":"trainguard","cmdline":"trainguard sensor","uid":65532}',
        ]
    )
    listen = (
        '{"proto":"tcp","address":"0.0.0.0","port":9400,"pid":900},'
        '{"proto":"tcp","address":"0.0.0.0","port":29500,"pid":1},'
        f'{{"proto":"tcp","address":"{ip}","port":41000,"pid":27}},'
        f'{{"proto":"tcp","address":"{ip}","port":41001,"pid":28}}' + extra_listen
    )
    conns = ",".join(
        [
            f'{{"proto":"tcp","local":"{ip}:9400","remote":"10.244.0.5:48812","state":"ESTABLISHED","pid":900}}',
            f'{{"proto":"tcp","local":"{ip}:50101","remote":"10.0.0.10:29500","state":"ESTABLISHED","pid":1}}',
            *(
                f'{{"proto":"tcp","local":"{ip}:{52000 + i}","remote":"{nxt}:{41000 + i}","state":"ESTABLISHED",'
                f'"pid":{27 + i}}}'
                for i in range(2)
            ),
            *(
                f'{{"proto":"tcp","local":"{ip}:{41000 + i}","remote":"{prv}:{52000 + i}","state":"ESTABLISHED",'
                f'"pid":{27 + i}}}'
                for i in range(2)
            ),
            f'{{"proto":"tcp","local":"{ip}:44100","remote":"203.0.113.40:443","state":"ESTABLISHED","pid":27}}',
            f'{{"proto":"udp","local":"{ip}:33000","remote":"10.96.0.10:53","state":"ESTABLISHED","pid":27}}',
        ]
    )
    dcgm = '"dcgm":{"DCGM_FI_PROF_PIPE_TENSOR_ACTIVE":%(t).3f,"DCGM_FI_PROF_SM_ACTIVE":0.85}'
    return (
        f'{{"ts":%(ts).3f,"pod":"bench/worker-{rank}","seq":%(seq)d,"gpus":[{gpus}],"processes":[{procs}],'
        f'"listening":[{listen}],"connections":[{conns}],{dcgm},"sensor":{{"version":"0.1.0","errors":[]}}}}'
    )


def lines(pods: int, count: int, rng: random.Random, first: int = 0) -> list[str]:
    """`count` JSON lines, pods interleaved one second at a time, from the `first`-th sample on."""
    templates = [template(r, pods) for r in range(pods)]
    out = []
    for k in range(first, first + count):
        second, rank = divmod(k, pods)
        u0, u1 = rng.uniform(0.5, 0.99), rng.uniform(0.5, 0.99)
        values = {
            "ts": T0 + second + rank * 1e-4,
            "seq": second,
            "u0": u0,
            "u1": u1,
            "p0": 120 + 560 * u0,
            "p1": 120 + 560 * u1,
            "t": 0.5 * (u0 + u1) * 0.55,
        }
        out.append(templates[rank] % values)
    return out


def parse_rates(pods: int, count: int, rng: random.Random) -> tuple[float, float, float]:
    """(parse only, parse + evaluate, wall seconds) on `count` JSON lines, made a tick at a time.

    Parse only: `Sample.model_validate_json`, samples per CPU second. Parse + evaluate: each line
    parsed and fed to an engine at once, as the operator does (the engine sees freshly parsed
    objects, nothing shared between samples), samples per CPU second.
    """
    started = time.perf_counter()
    parsing = both = 0.0
    done = 0
    clock = ManualClock(T0)
    engine = Engine(POLICY, clock=clock)
    while done < count:
        chunk = lines(pods, min(pods, count - done), rng, first=done)
        t0 = time.process_time()
        for line in chunk:
            Sample.model_validate_json(line)
        t1 = time.process_time()
        ts = T0 + done // pods
        clock.set(ts)
        engine.tick(ts)
        for line in chunk:
            engine.observe(Sample.model_validate_json(line))
        t2 = time.process_time()
        parsing += t1 - t0
        both += t2 - t1
        done += len(chunk)
    return done / parsing, done / both, time.perf_counter() - started


def stream(pods: int, count: int, rng: random.Random) -> Iterator[Sample]:
    """`count` samples made on the fly from one parsed sample per pod: new time, seq and GPU readings.

    Utilization is drawn to two decimals, so each pod's GPUs take one of 50 readings: those GPU
    objects are made once (by `model_copy` of the parsed ones) and shared by the samples that
    report them, and each sample is one `model_copy` of its pod's parsed sample. Processes,
    listeners and connections are the parsed ones, shared by a pod's samples (the engine compares
    what they hold, never whether they are the same objects, but comparing an object with itself
    stops at once, so a shared stream is kinder to it than a parser: `--fresh` and the parse +
    evaluate figure, on freshly parsed samples, measure that). Nothing is kept beyond the GPU readings.
    """
    bases = [Sample.model_validate_json(line) for line in lines(pods, pods, rng)]
    readings: dict[tuple[int, int, float], GpuSample] = {}

    def reading(rank: int, index: int, util: float) -> GpuSample:
        key = (rank, index, util)
        g = readings.get(key)
        if g is None:
            g = readings[key] = (
                bases[rank]
                .gpus[index]
                .model_copy(update={"utilization": util, "power_watts": round(120 + 560 * util, 1)})
            )
        return g

    uniform = rng.uniform
    for k in range(count):
        second, rank = divmod(k, pods)
        u0, u1 = round(uniform(0.5, 0.99), 2), round(uniform(0.5, 0.99), 2)
        yield bases[rank].model_copy(
            update={
                "ts": T0 + second + rank * 1e-4,
                "seq": second,
                "gpus": [reading(rank, 0, u0), reading(rank, 1, u1)],
                "dcgm": {
                    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": round(0.275 * (u0 + u1), 3),
                    "DCGM_FI_PROF_SM_ACTIVE": 0.85,
                },
            }
        )


def fresh_stream(pods: int, count: int, rng: random.Random) -> Iterator[Sample]:
    """`count` samples, each parsed from its own JSON line: no object shared between samples."""
    for first in range(0, count, pods):
        yield from map(Sample.model_validate_json, lines(pods, min(pods, count - first), rng, first=first))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--samples", type=int, default=DAY_SAMPLES, help=f"samples to evaluate (default {DAY_SAMPLES})")
    parser.add_argument("--pods", type=int, default=100, help="pods sampled each second (default 100)")
    parser.add_argument(
        "--parse-samples", type=int, default=100_000, help="JSON lines to parse for the parse figure (default 100000)"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--fresh", action="store_true", help="evaluate samples each parsed from its own line (nothing shared)"
    )
    args = parser.parse_args()

    cpu = None
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
    rng = random.Random(args.seed)
    parse_count = min(args.parse_samples, args.samples)
    parsed_per_s, parsed_evaluated_per_s, parse_wall = parse_rates(args.pods, parse_count, rng)

    started = time.perf_counter()
    clock = ManualClock(T0)
    engine = Engine(POLICY, clock=clock)
    spent = 0.0
    decisions = 0
    done = 0
    pods = args.pods
    t0 = time.process_time()
    samples = (fresh_stream if args.fresh else stream)(pods, args.samples, rng)
    while done < args.samples:
        # One tick's worth at a time: made (not timed), then evaluated (timed), then dropped.
        batch = list(itertools.islice(samples, pods))
        t1 = time.process_time()
        clock.set(batch[0].ts)
        decisions += len(engine.tick(batch[0].ts))
        for s in batch:
            decisions += len(engine.observe(s))
        spent += time.process_time() - t1
        done += len(batch)
    generating = time.process_time() - t0 - spent
    elapsed = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # A fixed pure-Python yardstick, to compare machines: a million dict inserts (about 0.06 s on a
    # current desktop core with CPython 3.11).
    y0 = time.process_time()
    yardstick: dict[int, int] = {}
    for i in range(1_000_000):
        yardstick[i] = i
    yard_s = time.process_time() - y0

    evaluated_per_s = done / spent
    print(
        f"detection benchmark: {done:,} samples ({pods} pods, {done / pods:,.0f} s of 1 Hz telemetry), streamed"
        f"{' (each sample freshly parsed)' if args.fresh else ''}"
        f"{f', pinned to CPU {cpu}' if cpu is not None else ''}, Python {sys.version.split()[0]}"
    )
    print("  figures are samples per CPU second of this process (other work on the machine does not count)")
    print(
        f"  evaluate only (Engine.observe + tick):      {evaluated_per_s:>10,.0f} samples/s"
        f"  ({spent:.1f} s CPU; {elapsed:.1f} s wall with making the samples, {generating:.1f} s CPU of it)"
    )
    print(f"  parse only (Sample.model_validate_json):    {parsed_per_s:>10,.0f} samples/s  (on {parse_count:,} lines)")
    print(
        f"  parse + evaluate (each line parsed, then observed): {parsed_evaluated_per_s:>10,.0f} samples/s"
        f"  (same lines, {parse_wall:.1f} s wall for both parse figures)"
    )
    print(f"  decisions: {decisions}, standing violations at the end: {len(engine.standing())}")
    print(f"  peak memory (max RSS): {peak_mib:.0f} MiB")
    print(f"  this machine's yardstick: 1M dict inserts in {yard_s:.3f} s CPU (about 0.06 s on a current desktop core)")
    verdict = "met" if evaluated_per_s >= GOAL else "NOT met"
    print(f"  goal, {GOAL:,} samples/s evaluated (evaluate only) on one core: {verdict}")
    return 0  # a benchmark reports; it does not gate `make bench` on the machine's speed


if __name__ == "__main__":
    sys.exit(main())
