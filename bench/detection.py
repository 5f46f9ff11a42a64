#!/usr/bin/env python3
"""Detection engine throughput: samples evaluated per second on one core, and peak memory.

    .venv/bin/python bench/detection.py                 # a day of 1 Hz telemetry for 100 pods (8.64 M samples)
    .venv/bin/python bench/detection.py --samples 200000

The samples are generated on the fly, in batches (never held in memory), as JSON lines shaped like
the example traces: a data-parallel worker with two GPUs, six processes, four listeners and eight
connections (NCCL ring, rendezvous, the operator reading the sensor), DCGM metrics, utilization and
power varying per sample. One pod in a hundred keeps an undeclared listener open, so the
de-duplication path runs too, and `tick` runs once per simulated second.

Three figures are printed, each timed separately in CPU time of this process (so that other
work on a shared machine does not count against it; the wall-clock elapsed time is printed too):
parsing (JSON line to a validated `Sample`, the
operator's edge), evaluation (`Engine.observe` on parsed samples, plus the ticks: the engine's hot
path) and the two together. Generating the lines is not timed. Peak memory is the process's
maximum resident set size.

The goal is at least 100,000 samples per second for evaluation.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import time

from trainguard.api.sample import Sample
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--samples", type=int, default=DAY_SAMPLES, help=f"samples to run (default {DAY_SAMPLES})")
    parser.add_argument("--pods", type=int, default=100, help="pods sampled each second (default 100)")
    parser.add_argument(
        "--batch",
        type=int,
        default=100,
        help="samples generated, then parsed, then evaluated per batch (default 100: one tick of 100 pods, "
        "as the operator sees them; large batches evaluate samples that have left the CPU cache)",
    )
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    cpu = None
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
    rng = random.Random(args.seed)
    templates = [template(r, args.pods) for r in range(args.pods)]
    clock = ManualClock(T0)
    engine = Engine(POLICY, clock=clock)

    parse_s = eval_s = 0.0
    decisions = 0
    done = 0
    started = time.perf_counter()
    while done < args.samples:
        n = min(args.batch, args.samples - done)
        lines = []
        for k in range(done, done + n):
            second, rank = divmod(k, args.pods)
            u0, u1 = rng.uniform(0.5, 0.99), rng.uniform(0.5, 0.99)
            lines.append(
                templates[rank]
                % {
                    "ts": T0 + second + rank * 1e-4,
                    "seq": second,
                    "u0": u0,
                    "u1": u1,
                    "p0": 120 + 560 * u0,
                    "p1": 120 + 560 * u1,
                    "t": 0.5 * (u0 + u1) * 0.55,
                }
            )
        t0 = time.process_time()
        samples = [Sample.model_validate_json(line) for line in lines]
        t1 = time.process_time()
        for k, s in enumerate(samples, start=done):
            if k % args.pods == 0:
                clock.set(s.ts)
                decisions += len(engine.tick(s.ts))
            decisions += len(engine.observe(s))
        t2 = time.process_time()
        parse_s += t1 - t0
        eval_s += t2 - t1
        done += n
    elapsed = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    evaluate_rate = done / eval_s
    print(
        f"detection benchmark: {done:,} samples ({args.pods} pods, {done / args.pods:,.0f} s of 1 Hz telemetry)"
        f"{f', pinned to CPU {cpu}' if cpu is not None else ''}, Python {sys.version.split()[0]}"
    )
    print(f"  evaluate only (Engine.observe + tick): {evaluate_rate:>12,.0f} samples/s  ({eval_s:.1f} s)")
    print(f"  parse only (Sample.model_validate_json): {done / parse_s:>10,.0f} samples/s  ({parse_s:.1f} s)")
    print(f"  parse + evaluate:                      {done / (parse_s + eval_s):>12,.0f} samples/s")
    print(f"  elapsed (including generating the lines): {elapsed:.1f} s")
    print(f"  decisions: {decisions}, standing violations at the end: {len(engine.standing())}")
    print(f"  peak memory (max RSS): {peak_mib:.0f} MiB")
    verdict = "meets" if evaluate_rate >= GOAL else "MISSES"
    print(f"  goal: {GOAL:,} samples/s evaluated: {verdict}")
    return 0 if evaluate_rate >= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
