"""The world and the pod for the cut tests (see test_cut.py).

Run as `unshare --net --pid --fork --mount-proc --kill-child python cut_world.py WORK TRAINGUARD`: pid 1 of the test's
"world" network namespace (nothing in it but its loopback and one veth). It starts the pod, pid 1 of its own pid +
network namespace (`cut_world.py --pod ...`), links the two with a veth pair (world 10.199.0.1, pod 10.199.0.2),
and reaps until killed. The test puts its listeners (the attacker's end of the tunnels, an allowed peer) in the
world namespace. The pod, once WORK/go exists, runs a python tunnel client, an nc tunnel, an allowed client and the
sensor (serving /v2 with WORK/key), and writes WORK/manifest.json with their pids in the pod's pid namespace.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

WORLD, POD = "10.199.0.1", "10.199.0.2"
TUNNEL_PORT, NC_PORT, ALLOWED_PORT, SENSOR_PORT = 2222, 2223, 8080, 9400

STREAMER = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
while True:  # a reverse tunnel: the remote end talks back through it too
    s.sendall(b"x" * 512)
    time.sleep(0.05)
"""


def run(*argv: str) -> None:
    subprocess.run(argv, check=True)


def world(work: Path, trainguard: str) -> None:
    run("ip", "link", "set", "lo", "up")
    argv = ["unshare", "--net", "--pid", "--fork", "--mount-proc", "--kill-child", sys.executable, __file__]
    pod = subprocess.Popen([*argv, "--pod", str(work), trainguard])
    mine = os.readlink("/proc/self/ns/net")
    deadline = time.monotonic() + 10
    while os.readlink(f"/proc/{pod.pid}/ns/net") == mine:  # unshare has not made the pod's namespace yet
        if time.monotonic() > deadline:
            raise SystemExit("the pod's network namespace did not appear")
        time.sleep(0.01)
    run("ip", "link", "add", "tgworld", "type", "veth", "peer", "name", "tgpod", "netns", str(pod.pid))
    run("ip", "addr", "add", f"{WORLD}/24", "dev", "tgworld")
    run("ip", "link", "set", "tgworld", "up")
    (work / "world-ready").write_text("")
    while True:
        try:
            os.wait()
        except ChildProcessError:
            time.sleep(0.5)


def pod(work: Path, trainguard: str) -> None:
    deadline = time.monotonic() + 10
    while subprocess.run(["ip", "link", "show", "tgpod"], check=False, capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            raise SystemExit("the veth did not arrive")
        time.sleep(0.01)
    run("ip", "link", "set", "lo", "up")
    run("ip", "addr", "add", f"{POD}/24", "dev", "tgpod")
    run("ip", "link", "set", "tgpod", "up")
    while not (work / "go").exists():
        time.sleep(0.01)
    log = (work / "pod.log").open("ab")
    out = {"stdout": log, "stderr": log}
    py = sys.executable
    marker = f"--tg-cut-test={work}"
    roles = {
        "tunnel": subprocess.Popen([py, "-c", STREAMER, WORLD, str(TUNNEL_PORT), marker, "tunnel"], **out),
        "allowed": subprocess.Popen([py, "-c", STREAMER, WORLD, str(ALLOWED_PORT), marker, "allowed"], **out),
        "nc": subprocess.Popen(
            ["sh", "-c", f"while :; do echo beat; sleep 0.05; done | nc {WORLD} {NC_PORT}", marker], **out
        ),
        "sensor": subprocess.Popen(
            [trainguard, "sensor", "--pod", "test/cutpod", "--address", POD, "--port", str(SENSOR_PORT),
             "--interval", "0.2", "--gpu-source", "none", "--key-file", str(work / "key"), "--log-level", "INFO"],
            **out,
        ),
    }  # fmt: skip
    manifest = {name: p.pid for name, p in roles.items()}
    (work / "manifest.json.tmp").write_text(json.dumps(manifest))
    (work / "manifest.json.tmp").rename(work / "manifest.json")
    while True:
        try:
            os.wait()
        except ChildProcessError:
            time.sleep(0.5)


if __name__ == "__main__":
    if sys.argv[1] == "--pod":
        pod(Path(sys.argv[2]), sys.argv[3])
    else:
        world(Path(sys.argv[1]), sys.argv[2])
