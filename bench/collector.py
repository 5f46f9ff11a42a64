"""The operator's collector alone against N replaying sensors: how long N streams take to open, and what they cost.

No control plane: `trainguard.k8s.collector.Collector` (the operator's own) in this process, with a sink that
counts, and bench/sensorfleet.py's player processes on N loopback IPs (the real protocol, one job key). It
separates the collector's cost from the rest of the operator's at 5,000 pods (bench/enforcement.py) and shows the
GIL's part: `--busy` runs a CPU-bound neighbour thread in this process (busy 0.4 s of every 0.5 s, as detection,
kopf and the reconcile workers are to the collector), `--switch-interval` sets `sys.setswitchinterval` (Python's
default is 5 ms; 0.5 ms helped here but did not move the 5,000-pod bench's limit: docs/sessions/2026-12-02-bench.md).

    .venv/bin/python bench/collector.py [--pods 5000] [--busy] [--switch-interval 0.0005] [--seconds 30]

Printed every 3 s: streams open (player side), the collector's states, samples received, this process's cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.sensorfleet import Fleet  # noqa: E402

from trainguard.api.sample import Sample  # noqa: E402
from trainguard.k8s.collector import Collector, Target  # noqa: E402

JOB = ("bench", "job")
KEY = b"the bench's job key, 32 bytes..."


def busy() -> None:
    while True:
        end = time.perf_counter() + 0.4
        d: dict[int, int] = {}
        while time.perf_counter() < end:
            for i in range(1000):
                d[i] = i
        time.sleep(0.1)


def ip_of(i: int) -> str:
    return f"127.{200 + i // 60000}.{(i // 250) % 240}.{i % 250 + 1}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=5000)
    parser.add_argument("--players", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--busy", action="store_true", help="a CPU-bound neighbour thread in the collector's process")
    parser.add_argument("--switch-interval", type=float, default=None, help="sys.setswitchinterval (default 0.005)")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long to watch after asking for the streams")
    parser.add_argument("--port", type=int, default=47123)
    args = parser.parse_args()
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    load = os.getloadavg()
    print(
        f"{args.pods} streams, {args.players} player processes, busy neighbour {'on' if args.busy else 'off'},"
        f" switch interval {sys.getswitchinterval() * 1000:g} ms; load average {load[0]:.1f} {load[1]:.1f}"
    )
    received = [0]

    def on_sample(target: Target, sample: Sample, arrived: float) -> None:
        received[0] += 1

    def on_forged(target: Target, why: str) -> None:
        print(f"  forged line from {target.pod}: {why}")

    with tempfile.TemporaryDirectory(prefix="bench-collector-") as tmp:
        fleet = Fleet(args.players, args.port, Path(tmp))
        collector: Collector | None = None
        try:
            pods = [(f"bench/p{i}", ip_of(i), KEY) for i in range(args.pods)]
            fleet.add(pods)
            if args.busy:
                threading.Thread(target=busy, daemon=True).start()
            collector = Collector(on_sample, on_forged)
            started = time.monotonic()
            cpu0 = time.process_time()
            collector.want(JOB, {pod: Target(JOB, pod, ip, args.port, KEY) for pod, ip, _ in pods})
            all_open: float | None = None
            last_cpu, last_at, last_received = cpu0, started, 0
            while time.monotonic() - started < args.seconds:
                time.sleep(3)
                now, cpu = time.monotonic(), time.process_time()
                state = fleet.state()
                if all_open is None and state["streams"] >= args.pods:
                    all_open = now - started
                states = collector.states()
                print(
                    f"  {now - started:4.0f} s: {state['streams']} open, {states}, "
                    f"{(received[0] - last_received) / (now - last_at):,.0f} samples/s, "
                    f"{(cpu - last_cpu) / (now - last_at):.2f} cores"
                )
                last_cpu, last_at, last_received = cpu, now, received[0]
            opened = f"{all_open:.0f} s" if all_open is not None else f"not within {args.seconds:g} s"
            print(f"all {args.pods} streams open after {opened}; {fleet.state()['opened']} opened in all")
        finally:
            if collector is not None:
                collector.stop()
            fleet.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
