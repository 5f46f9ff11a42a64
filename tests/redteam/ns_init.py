"""pid 1 of a namespace the red-team tests make (`unshare --net --pid --fork --mount-proc --kill-child`).

It does what the test asks, one JSON object a line on stdin, one answer a line on stdout, so that
the test knows each process by the pid it has *inside* the namespace (the pid the sensor reports):

    {"op": "spawn", "argv": [...], "executable": PATH?}  ->  {"pid": N}
    {"op": "signal", "pid": N, "signal": S}               ->  {"ok": true}
    {"op": "ping"}                                        ->  {"ok": true}

A spawned process has /dev/null for its standard streams (it makes its own sockets), so nothing
it does reaches the test's terminal. A thread reaps every child as it exits (pid 1's job), so no
zombie lingers in the process list. `executable` runs a file under another argv[0] (`exec -a`).
Killing the `unshare` that started it kills this pid 1, and the namespace with everything in it.
"""

from __future__ import annotations

import json
import os
import sys
import threading


def reap() -> None:
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            threading.Event().wait(0.05)
        except InterruptedError:
            continue


def spawn(argv: list[str], executable: str | None) -> int:
    pid = os.fork()
    if pid == 0:  # the child: streams to /dev/null, then exec
        try:
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.closerange(3, 1024)
            os.setsid()
            os.execvp(executable or argv[0], argv)
        finally:
            os._exit(127)
    return pid


def main() -> None:
    threading.Thread(target=reap, daemon=True).start()
    out = sys.stdout
    out.write(json.dumps({"ready": os.getpid()}) + "\n")
    out.flush()
    for line in sys.stdin:
        request = json.loads(line)
        op = request["op"]
        try:
            if op == "spawn":
                answer: dict[str, object] = {"pid": spawn(request["argv"], request.get("executable"))}
            elif op == "signal":
                os.kill(request["pid"], request["signal"])
                answer = {"ok": True}
            else:
                answer = {"ok": True}
        except OSError as exc:
            answer = {"error": str(exc)}
        out.write(json.dumps(answer) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
