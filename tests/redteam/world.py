"""A pod and the outside world, each a pid + network namespace the test makes, joined by one veth pair.

    pod namespace (10.244.1.10)  <-- veth -->  outside namespace (the pool, C2, the object store,
      the workload, the sensor                  another job pod, the cluster DNS: outside.py)

The pod's network namespace holds only the pod's sockets, so the real sensor (`trainguard sensor`,
run inside it) reports exactly what it would in a pod, and the far ends' sockets are not in its
samples. The outside namespace has no link but the veth: nothing can leave the machine. Each
namespace's pid 1 is `ns_init.py`, which spawns and signals processes on the test's behalf and
answers with the pid *inside* the namespace (the pid the samples carry). Killing the two `unshare`
processes kills both pid 1s and with them the namespaces and everything in them.

`Judge` reads a sensor's recording as it grows and feeds each sample, as it comes, to real
`trainguard.detection.Engine`s with a policy each, on a clock that runs `scale` times faster than the
sensor's (a sensor sampling every 0.2 s is judged as one sampling every second, so a 3-sample
debounce takes 0.6 s and the 60 s gap window 12 s).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import pytest

from tests.polling import wait_for
from tests.redteam import outside
from trainguard.api.sample import ProcessInfo, Sample, parse_sample
from trainguard.api.v1alpha1 import Monitoring, Policy
from trainguard.detection import Decision, Engine, EngineContext, Violation
from trainguard.detection.engine import ManualClock

T = TypeVar("T")
HERE = Path(__file__).resolve().parent
PY = sys.executable
TRAINGUARD = str(Path(sys.executable).with_name("trainguard"))
#: Where the dialled pod's sensor says it is, and what the operator would tell the engine.
POD = "agents/worker-0"
CONTEXT = EngineContext(
    job_pod_ips=frozenset({outside.POD_IP, outside.PEER_POD}), dns_resolvers=frozenset({outside.DNS})
)


def require() -> None:
    """Skip, saying why, where the namespaces cannot be made or the sensor is not installed."""
    if os.geteuid() != 0:
        pytest.skip("the red-team tests need root: they create pid and network namespaces and a veth pair")
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            pytest.skip(f"the red-team tests need {tool}")
    if not Path(TRAINGUARD).exists():
        pytest.skip(f"the red-team tests run the real sensor: {TRAINGUARD} is not installed (make venv)")


class Namespace:
    """A pid + network + mount namespace whose pid 1 is ns_init.py."""

    def __init__(self, name: str, init: str = PY) -> None:
        self.name = name
        argv = ["unshare", "--net", "--pid", "--fork", "--mount-proc", "--kill-child", init, str(HERE / "ns_init.py")]
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
        )
        ready = self._answer()
        if "ready" not in ready:
            raise AssertionError(f"{name}: pid 1 did not start: {ready}")
        # `unshare` itself sits in the new network namespace (it unshared before forking pid 1).
        own = os.readlink("/proc/self/ns/net")
        theirs = os.readlink(f"/proc/{self.process.pid}/ns/net")
        if own == theirs:
            raise AssertionError(f"{name}: not in a network namespace of its own")
        self.net_pid = self.process.pid

    def _answer(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            err = self.process.stderr.read() if self.process.stderr else ""
            raise AssertionError(f"{self.name}: pid 1 exited: {err}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        stdin: IO[str] | None = self.process.stdin
        assert stdin is not None
        stdin.write(json.dumps(request) + "\n")
        stdin.flush()
        answer = self._answer()
        if "error" in answer:
            raise AssertionError(f"{self.name}: {request}: {answer['error']}")
        return answer

    def spawn(self, *argv: str, executable: str | None = None) -> int:
        """Start a process in the namespace (streams on /dev/null); its pid there."""
        return int(self._ask({"op": "spawn", "argv": list(argv), "executable": executable})["pid"])

    def python(self, code: str, *args: str) -> int:
        return self.spawn(PY, "-c", code, *args)

    def signal(self, pid: int, signal: int) -> None:
        self._ask({"op": "signal", "pid": pid, "signal": signal})

    def ip(self, *args: str) -> None:
        """`ip` in this network namespace (from the host, by the pid that holds it)."""
        subprocess.run(["nsenter", "-t", str(self.net_pid), "-n", "ip", *args], check=True, capture_output=True)

    def close(self) -> None:
        self.process.kill()
        self.process.wait(10)


@dataclass
class World:
    work: Path
    pod: Namespace
    outside: Namespace

    def close(self) -> None:
        self.pod.close()
        self.outside.close()


def make_world(work: Path) -> World:
    """The two namespaces, joined, addressed and routed; the outside hosts listening."""
    require()
    if shutil.which("nsenter") is None:
        pytest.skip("the red-team tests need nsenter (util-linux)")
    # The pod's pid 1 plays the pause process: the interpreter under the file name `pause`.
    pause = work / "sandbox" / "pause"
    pause.parent.mkdir()
    shutil.copy(os.path.realpath(PY), pause)
    pod = Namespace("pod", init=str(pause))
    try:
        out = Namespace("outside")
    except BaseException:
        pod.close()
        raise
    world = World(work, pod, out)
    try:
        subprocess.run(
            ["ip", "link", "add", "tgpod0", "netns", str(pod.net_pid), "type", "veth",
             "peer", "name", "tgout0", "netns", str(out.net_pid)],
            check=True, capture_output=True,
        )  # fmt: skip
        for ns in (pod, out):
            ns.ip("link", "set", "lo", "up")
        pod.ip("addr", "add", f"{outside.POD_IP}/32", "dev", "tgpod0")
        pod.ip("link", "set", "tgpod0", "up")
        pod.ip("route", "add", "default", "dev", "tgpod0")
        for address in outside.ADDRESSES:
            out.ip("addr", "add", f"{address}/32", "dev", "tgout0")
        out.ip("link", "set", "tgout0", "up")
        out.ip("route", "add", f"{outside.POD_IP}/32", "dev", "tgout0")
        out.spawn(PY, str(HERE / "outside.py"), str(work))
        wait_for((work / "outside.ready").exists, 20, "the outside hosts listening", interval=0.05)
    except BaseException:
        world.close()
        raise
    return world


# --- judging -----------------------------------------------------------------------------------------------------


@dataclass
class Verdicts:
    """One engine over one sensor's samples, as the operator would run it for the pod it dialled."""

    engine: Engine
    clock: ManualClock
    dialled: str
    decisions: list[Decision] = field(default_factory=list)

    def new(self, rule: str) -> list[Violation]:
        return [d.violation for d in self.decisions if d.kind == "new" and d.violation.rule == rule]

    def about(self, pid: int) -> list[Violation]:
        """Every violation ever raised whose evidence names this pid (the decisions', and the standing ones' latest)."""
        seen = [d.violation for d in self.decisions] + self.engine.standing()
        return [v for v in seen if v.evidence.get("pid") == pid]

    def standing(self, rule: str, pid: int | None = None) -> Violation | None:
        for v in self.engine.standing():
            if v.rule == rule and (pid is None or v.evidence.get("pid") == pid):
                return v
        return None


class Judge:
    """Tails a sensor's `--record` file and feeds every sample to each of its engines as it arrives."""

    def __init__(self, path: Path, scale: float) -> None:
        self.path = path
        self.scale = scale
        self.samples: list[Sample] = []
        self.engines: dict[str, Verdicts] = {}
        self._offset = 0
        self._pending = b""
        self._t0: float | None = None
        #: Pids of the pod's standing processes, for the tests to name (the sensor's, the trainer's).
        self.sensor = 0
        self.trainer = 0

    def add(self, name: str, policy: Policy, dialled: str = POD, context: EngineContext = CONTEXT) -> Verdicts:
        """An engine judging this sensor's samples as coming from `dialled`, from the next sample on."""
        clock = ManualClock(0.0)
        verdicts = Verdicts(Engine(policy, context, clock, Monitoring()), clock, dialled)
        self.engines[name] = verdicts
        return verdicts

    def feed(self) -> int:
        """Judge the samples written since the last call; how many there were."""
        if not self.path.exists():
            return 0
        with self.path.open("rb") as fh:
            fh.seek(self._offset)
            chunk = fh.read()
        self._offset += len(chunk)
        data = self._pending + chunk
        lines = data.split(b"\n")
        self._pending = lines.pop()
        for line in lines:
            if not line.strip():
                continue
            sample = parse_sample(line)  # the contract's own parser, as the operator reads a stream
            if self._t0 is None:
                self._t0 = sample.ts
            now = self._t0 + (sample.ts - self._t0) * self.scale
            for v in self.engines.values():
                v.clock.set(now)
                v.decisions.extend(v.engine.tick())
                v.decisions.extend(v.engine.observe(v.dialled, sample))
            self.samples.append(sample)
        return len(lines)

    def until(self, what: str, found: Callable[[], T | None], timeout: float = 15) -> T:
        """Feed the engines until `found()` says something, within a deadline."""

        def check() -> T | None:
            self.feed()
            return found()

        return wait_for(check, timeout, what, interval=0.1)

    def process(self, pid: int) -> ProcessInfo | None:
        """The latest the sensor said of this pid."""
        for sample in reversed(self.samples):
            for p in sample.processes:
                if p.pid == pid:
                    return p
        return None

    def seen_in(self, pids: Iterable[int]) -> int:
        """In how many judged samples all of these pids appear."""
        want = set(pids)
        return sum(1 for s in self.samples if want <= {p.pid for p in s.processes})

    def judged_with(self, pids: Iterable[int], samples: int, timeout: float = 15) -> None:
        """Wait until the engines have judged `samples` samples in which all these processes ran."""
        want = list(pids)
        self.until(f"{samples} samples showing pids {want}", lambda: self.seen_in(want) >= samples or None, timeout)
