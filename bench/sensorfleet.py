"""The replaying sensors of bench/enforcement.py in processes of their own: a fleet of `tests.sensorplay.Player`s.

At 5,000 pods one player in the bench's own process could not answer in time (the bench listed 5,000 pods every
second beside it, and the kubernetes client held the GIL), and the operator's 5 s read timeout turned the late
lines into reconnect storms. Here each member is a child process (`python bench/sensorfleet.py serve --port P`)
that plays a share of the pods on their own 127.x IPs, speaking the real protocol with the job's real key; the
bench talks to it over the child's stdin and stdout, one JSON object a line each way:

    {"op": "add", "pods": [[pod, ip, key_hex], ...]}    -> {"ok": true}
    {"op": "mode", "pod": pod, "mode": "tunnel"}          -> {"ok": true}
    {"op": "state"}                                       -> {"streams", "opened", "sent", "refused", "pods"}
    {"op": "streaming"}                                   -> {"pods": [the pods with a stream open now]}
    {"op": "stop"}                                        -> {"ok": true}, then the child exits

`streams` are open now, `opened` ever (more than the pods: reconnects), `sent` sample lines written, `refused`
requests that failed the credential, signature, age or nonce check; `pods` holds only the pods not `clean` or
cut at least once: mode, modeSince, cutAt, cuts.

A child dies with the bench (PR_SET_PDEATHSIG, and it exits when its stdin closes), so that an interrupted bench
leaves no listener behind.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
PR_SET_PDEATHSIG = 1


class Member:
    """One player process, driven from the bench (a lock per member: requests and answers alternate)."""

    def __init__(self, port: int, log_path: Path, interval_s: float = 1.0) -> None:
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "serve", f"--port={port}", f"--interval={interval_s}"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=ROOT,
            )
        self._lock = threading.Lock()

    def ask(self, request: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        with self._lock:
            if self.process.poll() is not None:
                raise RuntimeError(f"sensor player exited ({self.process.returncode}); see {self.log_path}")
            self.process.stdin.write(json.dumps(request).encode() + b"\n")
            self.process.stdin.flush()
            line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"sensor player closed its output; see {self.log_path}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"sensor player: {answer['error']}")
        return answer

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(OSError, RuntimeError, ValueError):
                self.ask({"op": "stop"}, timeout=10)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()


class Fleet:
    """`members` player processes on one port; each pod is played by one of them (round robin as they come)."""

    def __init__(self, members: int, port: int, log_dir: Path, interval_s: float = 1.0) -> None:
        self.members = [Member(port, log_dir / f"player-{i}.log", interval_s) for i in range(members)]
        self.pods: dict[str, int] = {}  # pod -> member index
        self.cpu0 = [self.cpu_seconds(m.process.pid) for m in self.members]

    def add(self, pods: list[tuple[str, str, bytes]]) -> None:
        batches: list[list[list[str]]] = [[] for _ in self.members]
        for pod, ip, key in pods:
            if pod in self.pods:
                continue
            index = len(self.pods) % len(self.members)
            self.pods[pod] = index
            batches[index].append([pod, ip, key.hex()])
        for member, batch in zip(self.members, batches, strict=True):
            if batch:
                member.ask({"op": "add", "pods": batch})

    def set_mode(self, pod: str, mode: str) -> None:
        self.members[self.pods[pod]].ask({"op": "mode", "pod": pod, "mode": mode})

    def state(self) -> dict[str, Any]:
        """Streams open, lines sent and requests refused in all, and the non-clean pods' records."""
        total: dict[str, Any] = {"streams": 0, "opened": 0, "sent": 0, "refused": 0, "pods": {}}
        for member in self.members:
            answer = member.ask({"op": "state"})
            for name in ("streams", "opened", "sent", "refused"):
                total[name] += answer[name]
            total["pods"].update(answer["pods"])
        return total

    def streaming(self) -> list[str]:
        """The pods whose sensor has a stream open now."""
        return sorted(pod for member in self.members for pod in member.ask({"op": "streaming"})["pods"])

    @staticmethod
    def cpu_seconds(pid: int) -> float:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def cpu_used(self) -> float:
        """CPU seconds all members used since they started."""
        return sum(self.cpu_seconds(m.process.pid) - c for m, c in zip(self.members, self.cpu0, strict=True))

    def stop(self) -> None:
        for member in self.members:
            member.stop()


# --- the child ------------------------------------------------------------------------------------------------


def serve(port: int, interval_s: float, requests: IO[bytes], answers: IO[bytes]) -> None:
    sys.path.insert(0, str(ROOT))
    from tests.sensorplay import Player  # noqa: PLC0415

    player = Player(port=port, interval_s=interval_s)

    def answer(body: dict[str, Any]) -> None:
        answers.write(json.dumps(body).encode() + b"\n")
        answers.flush()

    try:
        for line in requests:
            request = json.loads(line)
            op = request.get("op")
            try:
                if op == "add":
                    for pod, ip, key in request["pods"]:
                        player.add(pod, ip, bytes.fromhex(key))
                    answer({"ok": True})
                elif op == "mode":
                    player.set_mode(request["pod"], request["mode"])
                    answer({"ok": True})
                elif op == "state":
                    pods = {
                        name: {
                            "mode": p.mode,
                            "modeSince": p.mode_since,
                            "cutAt": p.cut_at,
                            "cuts": len(player.cuts.get(name, [])),
                        }
                        for name, p in list(player.pods.items())
                        if p.mode != "clean" or p.cut_at is not None
                    }
                    answer(
                        {
                            "streams": player.streams,
                            "opened": player.opened,
                            "sent": player.sent,
                            "refused": len(player.refused),
                            "pods": pods,
                            "at": time.time(),
                        }
                    )
                elif op == "streaming":
                    answer({"pods": sorted(name for name, p in list(player.pods.items()) if p.streams > 0)})
                elif op == "stop":
                    answer({"ok": True})
                    break
                else:
                    answer({"error": f"unknown op {op!r}"})
            except Exception as error:
                answer({"error": f"{type(error).__name__}: {error}"})
    finally:
        player.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="play sensors, driven over stdin/stdout (the bench starts this)")
    run.add_argument("--port", type=int, required=True)
    run.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    # Die with the bench, even when it is killed outright.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if os.getppid() == 1:  # the bench died before the line above
        return 1
    serve(args.port, args.interval, sys.stdin.buffer, sys.stdout.buffer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
