#!/usr/bin/env python3
"""Detection engine throughput: samples evaluated per second on one core, and peak memory.

    .venv/bin/python bench/detection.py                 # a day of 1 Hz telemetry for 100 pods (8.64 M samples)
    .venv/bin/python bench/detection.py --samples 200000
    .venv/bin/python bench/detection.py --samples 200000 --churn 0.1  # a tenth of samples with a new connection
    .venv/bin/python bench/detection.py --samples 200000 --fresh   # samples that share nothing
    .venv/bin/python bench/detection.py --samples 200000 --parsed  # every sample parsed whole from its own line
    .venv/bin/python bench/detection.py --samples 200000 --shared  # copies of one parse per pod

The samples are shaped like the example traces: a data-parallel worker with two GPUs, six
processes, four listeners and eight connections (NCCL ring, rendezvous, DNS, the object store,
the operator reading the sensor), DCGM metrics, utilization and power varying per sample. One
pod in a hundred keeps an undeclared listener open, so the de-duplication path runs too, and
`tick` runs once per simulated second. With probability `--churn` (default 1%) a sample holds one
more connection, to the object store from a new ephemeral port: a connection never seen before,
to a remote the engine has judged harmless (quiet) after its first sight, so it stays on the fast
path (the connections alone are judged), and the reader parses that section anew.

What is measured, in CPU time of this process (so that other work on a shared machine does not
count; the wall-clock elapsed time is printed too):

- **evaluate only**: `Engine.observe` and `Engine.tick` over the whole stream. The stream is made
  on the fly, one tick (one sample per pod) at a time; making it is not timed (the garbage
  collector is off while it is made, on while it is evaluated: collections then are counted;
  `--gc-while-making` keeps it on), and nothing is held beyond a tick. By default (mode read,
  the goal's) every sample is read from its own JSON line by one `SampleReader`, as `trainguard
  replay` and the operator read them (`read_stream`: a pod's unchanged sections are shared with
  its previous sample). `--fresh` makes every sample a new object graph, as a plain parse makes
  it (`built_stream`); `--parsed` parses every line whole (slower to make); `--shared` copies one
  parsed sample per pod (`stream`).
- on `--parse-samples` JSON lines of the same shape, made a tick at a time (`parse_rates`):
  **parse only** (`Sample.model_validate_json`), **parse + evaluate** (each line parsed and at
  once observed), **read only** (`SampleReader.read`) and **read + evaluate**: measured, not
  derived.

Peak memory is the process's maximum resident set size, and a pure-Python yardstick (a million
dict inserts) is printed so that figures from different machines can be compared.

The goal is at least 100,000 samples per second for evaluation.
"""

from __future__ import annotations

import argparse
import functools
import gc
import itertools
import os
import random
import resource
import sys
import time
from collections import deque
from collections.abc import Iterator
from itertools import islice, repeat
from typing import Any, TypeVar

from pydantic import BaseModel
from trainguard.detection.reader import SampleReader

from trainguard.api.sample import Connection, GpuProcess, GpuSample, ListeningSocket, ProcessInfo, Sample, SensorInfo
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

M = TypeVar("M", bound=BaseModel)

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
    conns = (
        ",".join(
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
        + "%(extra)s"
    )
    dcgm = '"dcgm":{"DCGM_FI_PROF_PIPE_TENSOR_ACTIVE":%(t).3f,"DCGM_FI_PROF_SM_ACTIVE":0.85}'
    return (
        f'{{"ts":%(ts).3f,"pod":"bench/worker-{rank}","seq":%(seq)d,"gpus":[{gpus}],"processes":[{procs}],'
        f'"listening":[{listen}],"connections":[{conns}],{dcgm},"sensor":{{"version":"0.1.0","errors":[]}}}}'
    )


def lines(pods: int, count: int, rng: random.Random, first: int = 0, churn: float = 0.0) -> list[str]:
    """`count` JSON lines, pods interleaved one second at a time, from the `first`-th sample on.

    With probability `churn` a sample holds one more connection than its pod's usual ones: a
    short-lived upload to the object store from a new ephemeral port (a new connection, never
    seen before, to a remote that is quiet once judged: the engine judges the connections alone).
    """
    templates = [template(r, pods) for r in range(pods)]
    out = []
    for k in range(first, first + count):
        second, rank = divmod(k, pods)
        u0, u1 = rng.uniform(0.5, 0.99), rng.uniform(0.5, 0.99)
        extra = ""
        if churn and rng.random() < churn:
            port = 32768 + k % 28000
            extra = (
                f',{{"proto":"tcp","local":"10.{rank // 250}.{rank % 250}.10:{port}",'
                f'"remote":"203.0.113.41:443","state":"ESTABLISHED","pid":27}}'
            )
        values = {
            "extra": extra,
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


def parse_rates(pods: int, count: int, rng: random.Random, churn: float) -> dict[str, float]:
    """Samples per CPU second on `count` JSON lines, made a tick at a time, four ways.

    - parse: `Sample.model_validate_json`, each line on its own;
    - parse + evaluate: each line parsed so, and at once observed by an engine (which sees freshly
      parsed objects, nothing shared between samples);
    - read: a `SampleReader` (what replay and the operator use), each pod's unchanged sections
      taken from its previous line;
    - read + evaluate: each line read so, and at once observed by an engine.
    """
    spent = dict.fromkeys(("parse", "parse + evaluate", "read", "read + evaluate"), 0.0)
    done = 0
    engines = {k: (Engine(POLICY, clock=ManualClock(T0)), SampleReader()) for k in ("parse", "read")}
    timing_reader = SampleReader()
    while done < count:
        chunk = lines(pods, min(pods, count - done), rng, first=done, churn=churn)
        ts = T0 + done // pods
        t0 = time.process_time()
        for line in chunk:
            Sample.model_validate_json(line)
        t1 = time.process_time()
        for line in chunk:
            timing_reader.read(line)
        t2 = time.process_time()
        for engine, _ in engines.values():
            engine.clock.set(ts)  # type: ignore[attr-defined]
            engine.tick(ts)
        t3 = time.process_time()
        engine = engines["parse"][0]
        for line in chunk:
            engine.observe(Sample.model_validate_json(line))
        t4 = time.process_time()
        engine, reader = engines["read"]
        for line in chunk:
            engine.observe(reader.read(line))
        t5 = time.process_time()
        spent["parse"] += t1 - t0
        spent["read"] += t2 - t1
        spent["parse + evaluate"] += t4 - t3
        spent["read + evaluate"] += t5 - t4
        done += len(chunk)
    return {k: done / v for k, v in spent.items()}


def read_stream(pods: int, count: int, rng: random.Random, churn: float) -> Iterator[Sample]:
    """`count` samples, each read from its own JSON line by one `SampleReader`, as `trainguard
    replay` and the operator read them: a pod's sections that did not change since its previous
    line are its previous sample's (shared), the rest is parsed."""
    reader = SampleReader()
    for first in range(0, count, pods):
        yield from map(reader.read, lines(pods, min(pods, count - first), rng, first=first, churn=churn))


def stream(pods: int, count: int, rng: random.Random) -> Iterator[Sample]:
    """`count` samples made on the fly from one parsed sample per pod: new time, seq and GPU readings.

    Utilization is drawn to two decimals, so each pod's GPUs take one of 50 readings: those GPU
    objects are made once (by `model_copy` of the parsed ones) and shared by the samples that
    report them, and each sample is one `model_copy` of its pod's parsed sample. Processes,
    listeners and connections are the parsed ones, shared by a pod's samples (the engine compares
    what they hold, never whether they are the same objects, but comparing an object with itself
    stops at once, so a shared stream is kinder to it than a parser: the fresh and parsed modes and the parse +
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


def fresh_stream(pods: int, count: int, rng: random.Random, churn: float = 0.0) -> Iterator[Sample]:
    """`count` samples, each parsed from its own JSON line: no object shared between samples (slow)."""
    for first in range(0, count, pods):
        yield from map(Sample.model_validate_json, lines(pods, min(pods, count - first), rng, first=first, churn=churn))


#: pydantic-core's JSON parse hands out one shared object for a string shorter than this (its string
#: cache) and a new one for a longer string (`check_built` checks that this still holds).
STRING_CACHE_LEN = 64
_FIELD_NAMES: dict[type[BaseModel], tuple[str, ...]] = {
    cls: tuple(cls.model_fields)
    for cls in (Sample, GpuSample, GpuProcess, ProcessInfo, ListeningSocket, Connection, SensorInfo)
}
_new = object.__new__
_set = object.__setattr__


def _make(cls: type[M], fields: list[dict[str, Any]], fields_set: list[set[str]]) -> list[M]:
    """Models of `cls` with these field dicts and fields-sets (new ones, from `marshal`), as a parse
    leaves them (the values are those of a parse: nothing to validate)."""
    n = len(fields)
    objs = list(map(_new, repeat(cls, n)))
    deque(map(_set, objs, repeat("__dict__", n), fields), 0)
    deque(map(_set, objs, repeat("__pydantic_fields_set__", n), fields_set), 0)
    deque(map(_set, objs, repeat("__pydantic_extra__", n), repeat(None, n)), 0)
    deque(map(_set, objs, repeat("__pydantic_private__", n), repeat(None, n)), 0)
    return objs


def built_stream(pods: int, count: int, rng: random.Random) -> Iterator[Sample]:
    """`count` samples, each a new object graph as a parser makes it (no model, list, dict or set
    shared with another sample), made without parsing.

    One JSON line per pod is parsed, for the field values of its processes, listeners, connections
    and GPUs; each tick, every pod's sample is made of new models around new copies of those field
    dicts (`_make`), with a new time, seq, GPU readings and DCGM metrics as `lines` draws them.
    The strings in them are shared between samples, as pydantic-core's string cache shares strings
    shorter than `STRING_CACHE_LEN` (the bench's longest is 42 characters), and so are the ints that
    do not change (pids, ports, byte counts): a parse makes those anew (above 256), which a field
    comparison notices only as one identity test less; `--parsed` measures on real parses.
    `check_built` compares such samples with the parse of the same lines.
    """
    bases = [Sample.model_validate_json(line) for line in lines(pods, pods, random.Random(0))]
    assert all(
        len(s) < STRING_CACHE_LEN
        for b in bases
        for m in (*b.processes, *b.connections, *(p for g in b.gpus for p in g.processes))
        for s in vars(m).values()
        if isinstance(s, str)
    ), "a long string: make it anew per sample, as a parse does"
    tensor_key = sys.intern("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE")
    sm_key = "DCGM_FI_PROF_SM_ACTIVE"

    def flat(key: str) -> tuple[list[dict[str, Any]], list[frozenset[str]]]:
        models = [m for b in bases for m in getattr(b, key)]
        return [vars(m) for m in models], [frozenset(m.model_fields_set) for m in models]

    kinds = [
        (cls, key, *flat(key), [len(getattr(b, key)) for b in bases])
        for cls, key in ((ProcessInfo, "processes"), (ListeningSocket, "listening"), (Connection, "connections"))
    ]
    gp_models = [p for b in bases for g in b.gpus for p in g.processes]
    gp_fields, gp_sets = [vars(p) for p in gp_models], [frozenset(p.model_fields_set) for p in gp_models]
    gpu_models = [g for b in bases for g in b.gpus]
    gpu_fields, gpu_sets = [vars(g) for g in gpu_models], [frozenset(g.model_fields_set) for g in gpu_models]
    sensor_fields, sensor_sets = [vars(b.sensor) for b in bases], [frozenset(b.sensor.model_fields_set) for b in bases]
    sample_sets = [frozenset(b.model_fields_set) for b in bases]
    if any(len(b.gpus) != 2 for b in bases):
        raise ValueError("the stream draws two GPU readings per sample")
    uniform = rng.uniform
    for first in range(0, count, pods):
        second = first // pods
        n = min(pods, count - first)
        made = {}
        for cls, key, fields, sets, counts in kinds:
            objs = iter(_make(cls, list(map(dict, fields)), list(map(set, sets))))
            made[key] = [list(islice(objs, c)) for c in counts]
        gprocs = iter(_make(GpuProcess, list(map(dict, gp_fields)), list(map(set, gp_sets))))
        g_fields = list(map(dict, gpu_fields))
        heads = []
        for rank in range(n):
            u0, u1 = uniform(0.5, 0.99), uniform(0.5, 0.99)
            for g, u in zip(g_fields[2 * rank : 2 * rank + 2], (u0, u1), strict=True):
                g["utilization"] = round(u, 2)
                g["power_watts"] = round(120 + 560 * u, 1)
                g["processes"] = list(islice(gprocs, len(g["processes"])))
            heads.append(
                {
                    "ts": round(T0 + second + rank * 1e-4, 3),
                    "pod": bases[rank].pod,
                    "seq": int(str(second)),
                    "gpus": None,
                    "processes": made["processes"][rank],
                    "listening": made["listening"][rank],
                    "connections": made["connections"][rank],
                    "dcgm": {tensor_key: round(0.5 * (u0 + u1) * 0.55, 3), sm_key: bases[rank].dcgm[sm_key] + 0.0},
                    "sensor": None,
                }
            )
        gpus = iter(_make(GpuSample, g_fields, list(map(set, gpu_sets))))
        sensor_dicts = [{**f, "errors": []} for f in sensor_fields[:n]]
        sensors = _make(SensorInfo, sensor_dicts, list(map(set, sensor_sets[:n])))
        for h, sensor in zip(heads, sensors, strict=True):
            h["gpus"] = [next(gpus), next(gpus)]
            h["sensor"] = sensor
        yield from _make(Sample, heads, list(map(set, sample_sets[:n])))


def check_built(pods: int) -> None:
    """The built samples are those a parse of the same values makes, and share no object but short strings."""
    made = list(built_stream(pods, 2 * pods, random.Random(1)))
    parsed = list(map(Sample.model_validate_json, lines(pods, 2 * pods, random.Random(1))))
    for m, p in zip(made, parsed, strict=True):
        assert m == p and m.model_dump() == p.model_dump(), (m, p)
        assert m.model_fields_set == p.model_fields_set and m.gpus[0].model_fields_set == p.gpus[0].model_fields_set

    def objects(value: Any) -> Iterator[Any]:
        yield value
        if isinstance(value, BaseModel):
            value = [*vars(value).values(), value.model_fields_set]
        if isinstance(value, dict):
            value = [*value, *value.values()]
        if isinstance(value, list | tuple | set):
            for v in value:
                yield from objects(v)

    def shared(samples: list[Sample], ints: bool = False) -> set[str]:
        seen: dict[int, int] = {}
        out = set()
        for k, s in enumerate(samples):
            for o in objects(s):
                if o is None or isinstance(o, bool) or (isinstance(o, int) and (ints or -5 <= o <= 256)):
                    continue
                if isinstance(o, str) and len(o) < STRING_CACHE_LEN:
                    continue
                if seen.setdefault(id(o), k) != k:
                    out.add(f"{type(o).__name__} {o!r:.40}")
        return out

    # A parse shares short strings and nothing else (so says this check of pydantic-core); these
    # share the ints too (see `built_stream`).
    assert not shared(parsed), shared(parsed)
    assert not shared(made, ints=True), shared(made, ints=True)
    long_string = "python3 -u train.py " + "--flag " * 10
    a, b = (ProcessInfo.model_validate_json(f'{{"pid":1,"cmdline":"{long_string}","name":"python3"}}') for _ in "ab")
    assert a.name is b.name and a.cmdline is not b.cmdline, "pydantic-core's string cache changed: see STRING_CACHE_LEN"


MODES = {
    "read": "mode read: every sample read from its own JSON line by a SampleReader, as replay and the operator read",
    "fresh": "mode fresh: every sample a new object graph, as a plain parse makes it (strings and ints shared)",
    "parsed": "mode parsed: every sample parsed from its own JSON line by Sample.model_validate_json",
    "shared": "mode shared: a pod's samples copied from one parse, sharing its sections",
}
#: Samples with a connection never seen before, by default (modes read and parsed).
CHURN = 0.01


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--samples", type=int, default=DAY_SAMPLES, help=f"samples to evaluate (default {DAY_SAMPLES})")
    parser.add_argument("--pods", type=int, default=100, help="pods sampled each second (default 100)")
    parser.add_argument(
        "--parse-samples", type=int, default=100_000, help="JSON lines to parse for the parse figure (default 100000)"
    )
    parser.add_argument(
        "--churn",
        type=float,
        default=CHURN,
        help=f"share of samples holding a connection never seen before (modes read and parsed; default {CHURN})",
    )
    parser.add_argument("--seed", type=int, default=7)
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument(
        "--fresh",
        action="store_const",
        dest="mode",
        const="fresh",
        help="every sample a new object graph, as Sample.model_validate_json makes it (no churn)",
    )
    modes.add_argument(
        "--shared",
        action="store_const",
        dest="mode",
        const="shared",
        help="samples copied from one parsed sample per pod, sharing its processes, listeners and connections",
    )
    modes.add_argument(
        "--parsed", action="store_const", dest="mode", const="parsed", help="every sample parsed from its own line"
    )
    parser.add_argument(
        "--gc-while-making",
        action="store_true",
        help="keep the garbage collector on while samples are made (slower; the default turns it off then)",
    )
    args = parser.parse_args()

    cpu = None
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
    rng = random.Random(args.seed)
    parse_count = min(args.parse_samples, args.samples)
    parse_started = time.perf_counter()
    rates = parse_rates(args.pods, parse_count, rng, args.churn)
    parse_wall = time.perf_counter() - parse_started

    started = time.perf_counter()
    clock = ManualClock(T0)
    engine = Engine(POLICY, clock=clock)
    spent = 0.0
    decisions = 0
    done = 0
    pods = args.pods
    t0 = time.process_time()
    mode = args.mode or "read"
    if mode == "fresh":
        check_built(pods)
    if mode == "read":
        samples = read_stream(pods, args.samples, rng, args.churn)
    elif mode == "parsed":
        samples = fresh_stream(pods, args.samples, rng, args.churn)
    else:
        samples = {"fresh": built_stream, "shared": stream}[mode](pods, args.samples, rng)
    # The garbage collector is off while a batch is made (it would walk the whole heap every few
    # batches: about 45% of the making) and on while it is evaluated, so that collections the engine
    # causes are timed; they are counted. `--gc-while-making` keeps it on throughout.
    timed_collections = [0, False]

    def count_collections(phase: str, _info: dict[str, int]) -> None:
        if phase == "start" and timed_collections[1]:
            timed_collections[0] += 1

    gc.callbacks.append(count_collections)
    gc_off = not args.gc_while_making
    while done < args.samples:
        # One tick's worth at a time: made (not timed), then evaluated (timed), then dropped.
        if gc_off:
            gc.disable()
        batch = list(itertools.islice(samples, pods))
        gc.enable()
        timed_collections[1] = True
        t1 = time.process_time()
        clock.set(batch[0].ts)
        decisions += len(engine.tick(batch[0].ts))
        for s in batch:
            decisions += len(engine.observe(s))
        spent += time.process_time() - t1
        timed_collections[1] = False
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
        f", {MODES[mode]}"
        f"{f', pinned to CPU {cpu}' if cpu is not None else ''}, Python {sys.version.split()[0]}"
    )
    print("  figures are samples per CPU second of this process (other work on the machine does not count)")
    print(
        f"  evaluate only (Engine.observe + tick):      {evaluated_per_s:>10,.0f} samples/s"
        f"  ({spent:.1f} s CPU; {elapsed:.1f} s wall with making the samples, {generating:.1f} s CPU of it)"
    )
    churned = f", {args.churn:.0%} of samples with a new connection" if mode in ("read", "parsed") else ""
    print(f"  ({MODES[mode].split(': ', 1)[1]}{churned})")
    print(
        f"  on {parse_count:,} JSON lines of the same shape ({args.churn:.0%} with a new connection),"
        f" {parse_wall:.1f} s wall for these four:"
    )
    print(f"    parse only (Sample.model_validate_json):  {rates['parse']:>10,.0f} samples/s")
    print(f"    parse + evaluate (parsed, then observed): {rates['parse + evaluate']:>10,.0f} samples/s")
    print(f"    read only (SampleReader.read):            {rates['read']:>10,.0f} samples/s")
    print(f"    read + evaluate (read, then observed):    {rates['read + evaluate']:>10,.0f} samples/s")
    print(
        f"  garbage collections while evaluating: {timed_collections[0]}"
        f" (collector {'on' if args.gc_while_making else 'off'} while making samples)"
    )
    print(f"  decisions: {decisions}, standing violations at the end: {len(engine.standing())}")
    print(f"  peak memory (max RSS): {peak_mib:.0f} MiB")
    print(f"  this machine's yardstick: 1M dict inserts in {yard_s:.3f} s CPU (about 0.06 s on a current desktop core)")
    verdict = "met" if evaluated_per_s >= GOAL else "NOT met"
    print(f"  goal, {GOAL:,} samples/s evaluated (evaluate only) on one core: {verdict}")
    return 0  # a benchmark reports; it does not gate `make bench` on the machine's speed


if __name__ == "__main__":
    sys.exit(main())
