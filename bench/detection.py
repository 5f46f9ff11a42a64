#!/usr/bin/env python3
"""Detection throughput: samples read and evaluated per second on one core, for the plain engine.

    .venv/bin/python bench/detection.py                    # 200,000 samples of 100 pods
    .venv/bin/python bench/detection.py --samples 1000000 --churn 0.1

The samples are version-2 JSON lines shaped like the example traces as the v2 sensor writes them:
a data-parallel worker with two GPUs, six processes (executables, argv, containers, standard
streams), four listeners and eight connections (NCCL ring, rendezvous, DNS, the object store, the
operator reading the sensor), DCGM metrics, utilization and power varying per sample. One pod in a
hundred keeps an undeclared listener open, so the de-duplication path runs too; `tick` runs once
per simulated second. With probability `--churn` (default 1%) a sample holds one more connection,
to the object store from a new ephemeral port.

What is measured, in CPU time of this process pinned to one core (other work on a shared machine
does not count; wall time is printed too), each over the same lines:

- **read**: `trainguard.api.sample.read_sample` per line (what `trainguard replay` does: the
  sample's msgspec twin, derived from the pydantic models);
- **read (pydantic)**: `parse_sample` per line (pydantic's `model_validate_json`), for comparison;
- **evaluate**: `Engine.observe` and `Engine.tick` on samples read beforehand (with `read_sample`);
- **read + evaluate** (the goal's figure): each line read (`read_sample`) and at once observed.

The goal is at least 20,000 samples per second read + evaluate (twice the 10,000 GPU pods at 1 Hz
the product needs). A pure-Python yardstick (a million dict inserts) is printed so that figures
from different machines can be compared, and the peak resident set size.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import time
from collections.abc import Iterator

from trainguard.api.sample import Sample, parse_sample, read_sample
from trainguard.api.v1alpha1 import Monitoring, Policy
from trainguard.detection import Engine, EngineContext
from trainguard.detection.engine import ManualClock

GOAL = 20_000
T0 = 1767225600.0
GIB = 1024**3

POLICY = Policy.model_validate(
    {
        "network": {"egress": [{"cidr": "203.0.113.0/24", "ports": [{"port": 443}]}], "listenPorts": [29500]},
        "gpu": {"allowedProcesses": ["python*", "torchrun"], "maxPowerWatts": 700, "maxMemoryBytes": 80 * GIB},
        "processes": {"allowed": ["python*", "torchrun"]},
        "enforcement": {"debounce": {"samples": 3}},
    }
)


def ip(rank: int) -> str:
    return f"10.{rank // 250}.{rank % 250}.10"


def context(pods: int) -> EngineContext:
    return EngineContext(dns_resolvers=frozenset({"10.96.0.10"}), job_pod_ips=frozenset(ip(r) for r in range(pods)))


def _ep(address: str, port: int) -> str:
    return f'{{"address":"{address}","port":{port}}}'


def _proc(pid: int, ppid: int, name: str, exe: str, argv: list[str], *, container: str, inode: int) -> str:
    args = ",".join(f'"{a}"' for a in argv)
    return (
        f'{{"pid":{pid},"ppid":{ppid},"uid":1000,"name":"{name}","exe":"{exe}","exeStatus":"ok","argv":[{args}],'
        f'"containerId":"containerd://{container}","container":"{container}","startTime":{T0 - 3600},'
        f'"cpuSeconds":%(cpu).1f,"stdin":{{"kind":"file","target":"/dev/null"}},'
        f'"stdout":{{"kind":"pipe","target":"pipe:[{inode}]"}},"stderr":{{"kind":"pipe","target":"pipe:[{inode}]"}}}}'
    )


def template(rank: int, pods: int) -> str:
    """A JSON line with %-placeholders for ts, seq, the GPU readings and an extra connection."""
    me, nxt, prv = ip(rank), ip((rank + 1) % pods), ip((rank - 1) % pods)
    gpus = ",".join(
        f'{{"index":{i},"uuid":"GPU-{rank:04d}-{i}","utilization":%(u{i}).2f,"memoryUsedBytes":{63 * GIB},'
        f'"memoryTotalBytes":{80 * GIB},"powerWatts":%(p{i}).1f,"smClockMHz":1980,"processes":[{{"pid":{48213 + i},'
        f'"name":"python3","exe":"/usr/bin/python3.11","exeStatus":"ok","argv":["python3","-u","train.py",'
        f'"--local-rank","{i}"],"usedMemoryBytes":{62 * GIB}}}]}}'
        for i in range(2)
    )
    train = ["python3", "-u", "train.py", "--local-rank"]
    procs = ",".join(
        [
            _proc(1, 0, "torchrun", "/usr/bin/torchrun", ["torchrun", "train.py"], container="trainer", inode=11),
            *(
                _proc(27 + i, 1, "python3", "/usr/bin/python3.11", [*train, str(i)], container="trainer", inode=12 + i)
                for i in range(2)
            ),
            *(
                _proc(60 + i, 27 + i, "python3", "/usr/bin/python3.11", [*train, str(i)], container="trainer", inode=14)
                for i in range(2)
            ),
            _proc(
                900, 0, "trainguard", "/usr/local/bin/trainguard", ["trainguard", "sensor"],
                container="trainguard-sensor", inode=16,
            ),
        ]
    )
    listening = [("0.0.0.0", 9400, 900), ("0.0.0.0", 29500, 1), (me, 41000, 27), (me, 41001, 28)]
    if rank % 100 == 99:
        listening.append(("0.0.0.0", 8081, 733))
    listen = ",".join(
        f'{{"proto":"tcp","local":{_ep(a, p)},"pid":{pid},"inode":{700000 + p}}}' for a, p, pid in listening
    )
    conns = [
        ("tcp", (me, 9400), ("10.244.0.5", 48812), 900),
        ("tcp", (me, 50101), (ip(0), 29500), 1),
        *(("tcp", (me, 52000 + i), (nxt, 41000 + i), 27 + i) for i in range(2)),
        *(("tcp", (me, 41000 + i), (prv, 52000 + i), 27 + i) for i in range(2)),
        ("tcp", (me, 44100), ("203.0.113.40", 443), 27),
        ("udp", (me, 33000), ("10.96.0.10", 53), 27),
    ]
    conn_text = ",".join(
        f'{{"proto":"{pr}","local":{_ep(*lo)},"remote":{_ep(*re)},"state":"ESTABLISHED","pid":{pid},'
        f'"inode":{800000 + lo[1]},"bytesSent":%(b).0f,"bytesReceived":%(b).0f,"ageSeconds":%(age).1f}}'
        for pr, lo, re, pid in conns
    )
    dcgm = '"dcgm":{"DCGM_FI_PROF_PIPE_TENSOR_ACTIVE":%(t).3f,"DCGM_FI_PROF_SM_ACTIVE":0.85}'
    return (
        f'{{"version":2,"ts":%(ts).3f,"pod":"bench/worker-{rank}","seq":%(seq)d,"gpus":[{gpus}],'
        f'"processes":[{procs}],"listening":[{listen}],"connections":[{conn_text}%(extra)s],"unconnected":[],'
        f'{dcgm},"sensor":{{"version":"0.2.0","reader":"netlink","errors":[]}}}}'
    )


def lines(pods: int, count: int, churn: float, seed: int = 1) -> Iterator[tuple[str, str]]:
    """(pod, line) for `count` samples, pods interleaved one second at a time."""
    rng = random.Random(seed)
    templates = [template(r, pods) for r in range(pods)]
    for k in range(count):
        second, rank = divmod(k, pods)
        u0, u1 = rng.uniform(0.5, 0.99), rng.uniform(0.5, 0.99)
        extra = ""
        if churn and rng.random() < churn:
            port = 32768 + k % 28000
            extra = (
                f',{{"proto":"tcp","local":{_ep(ip(rank), port)},"remote":{_ep("203.0.113.41", 443)},'
                f'"state":"TIME_WAIT","pid":null,"inode":0}}'
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
            "cpu": 10.0 + second,
            "b": 1e6 * second,
            "age": float(second),
        }
        yield f"bench/worker-{rank}", templates[rank] % values


def yardstick() -> float:
    started = time.process_time()
    d: dict[int, int] = {}
    for i in range(1_000_000):
        d[i] = i
    return time.process_time() - started


class Evaluation:
    """One engine fed samples as a job's would be: the clock follows them, `tick` once a second."""

    def __init__(self, pods: int) -> None:
        self.clock = ManualClock(T0)
        self.engine = Engine(POLICY, context(pods), self.clock, Monitoring())
        self.last_tick = T0

    def observe(self, pod: str, s: Sample) -> None:
        self.clock.set(s.ts)
        if s.ts >= self.last_tick + 1.0:
            self.engine.tick()
            self.last_tick = s.ts
        self.engine.observe(pod, s)


def measure(pods: int, count: int, churn: float, chunk: int = 2000) -> dict[str, tuple[float, float]]:
    """(samples per CPU second, wall seconds) for read, evaluate, read + evaluate.

    The lines are made a chunk at a time (not timed), so that memory stays bounded; each chunk is
    read, evaluated (on samples read beforehand, untimed) and read + evaluated, each timed."""
    cpu = dict.fromkeys(("read", "read (pydantic)", "evaluate", "read + evaluate"), 0.0)
    wall = dict.fromkeys(cpu, 0.0)
    evaluate_only, end_to_end = Evaluation(pods), Evaluation(pods)
    stream = lines(pods, count, churn)

    def timed(name: str, started: tuple[float, float]) -> None:
        cpu[name] += time.process_time() - started[0]
        wall[name] += time.perf_counter() - started[1]

    def now() -> tuple[float, float]:
        return time.process_time(), time.perf_counter()

    done = 0
    while done < count:
        batch = [next(stream) for _ in range(min(chunk, count - done))]
        done += len(batch)
        started = now()
        for _, line in batch:
            read_sample(line)
        timed("read", started)
        started = now()
        for _, line in batch:
            parse_sample(line)
        timed("read (pydantic)", started)
        samples = [(pod, read_sample(line)) for pod, line in batch]
        started = now()
        for pod, s in samples:
            evaluate_only.observe(pod, s)
        timed("evaluate", started)
        del samples
        started = now()
        for pod, line in batch:
            end_to_end.observe(pod, read_sample(line))
        timed("read + evaluate", started)
    return {name: (count / cpu[name], wall[name]) for name in cpu}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--pods", type=int, default=100)
    parser.add_argument("--churn", type=float, default=0.01)
    parser.add_argument("--cpu", type=int, default=None, help="the core to pin to (default: the last one allowed)")
    args = parser.parse_args()
    allowed = sorted(os.sched_getaffinity(0))
    core = args.cpu if args.cpu is not None else allowed[-1]
    os.sched_setaffinity(0, {core})
    print(f"python {sys.version.split()[0]}, pinned to core {core}, yardstick {yardstick():.3f} s")
    print(f"{args.samples:,} samples of {args.pods} pods, churn {args.churn:g}")
    rates = measure(args.pods, args.samples, args.churn)
    for name, (rate, wall) in rates.items():
        print(f"  {name:<16} {rate:>10,.0f} samples/s   ({wall:.1f} s wall)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  peak RSS {peak:.0f} MiB")
    end_to_end = rates["read + evaluate"][0]
    verdict = "met" if end_to_end >= GOAL else "NOT met"
    print(f"goal: {GOAL:,} samples/s read + evaluate on one core: {verdict} ({end_to_end / GOAL:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
