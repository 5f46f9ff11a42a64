"""Real sockets for the red-team tests, made in a network namespace the test creates, read from the kernel.

`in_netns(code)` runs `code` (Python) in a fresh network namespace (`unshare -n`, root only) whose
loopback holds the addresses in `ADDRESSES`; nothing can leave it (it has no other link). After
the code has made its sockets, the kernel's socket tables (/proc/net/tcp, udp, raw) are read and
returned as version-2 sample sections (the pod's: sockets bound to the outside hosts' addresses
are left out), described as the sensor describes sockets: structured endpoints, the kernel's
state names, the inode; listeners in `listening`, sockets with a peer in `connections`, the rest
in `unconnected`. A small reader of the same tables for these unit-level tests (the end-to-end red team in
tests/redteam/ runs the real sensor).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from trainguard.sensor.sockets import TCP_STATES

#: The pod's address and the outside hosts the tests play, all on the namespace's loopback.
POD_IP = "10.244.1.10"
POOL = "192.0.2.77"
C2 = "192.0.2.10"
OBJECT_STORE = "203.0.113.40"
ADDRESSES = (POD_IP, POOL, C2, OBJECT_STORE)
OUTSIDE = (POOL, C2, OBJECT_STORE)

#: The kernel's socket states, by number: the sensor's own table (one definition).
_STATES = TCP_STATES

_READER = r'''
import json, socket, struct
def ip4(h):
    return socket.inet_ntop(socket.AF_INET, struct.pack("<I", int(h, 16)))
def ip6(h):
    words = [struct.pack("<I", int(h[i:i + 8], 16)) for i in range(0, 32, 8)]
    return socket.inet_ntop(socket.AF_INET6, b"".join(words))
out = []
for proto, path, conv in (("tcp", "/proc/net/tcp", ip4), ("tcp6", "/proc/net/tcp6", ip6),
                          ("udp", "/proc/net/udp", ip4), ("raw", "/proc/net/raw", ip4)):
    for line in open(path).read().splitlines()[1:]:
        f = line.split()
        (la, lp), (ra, rp) = f[1].split(":"), f[2].split(":")
        out.append({"proto": proto, "local": [conv(la), int(lp, 16)], "remote": [conv(ra), int(rp, 16)],
                    "state": int(f[3], 16), "inode": int(f[9])})
print("SOCKETS" + json.dumps({"sockets": out, "extra": globals().get("EXTRA")}))
'''


def available() -> None:
    """Skip (saying why) where namespaces cannot be made."""
    if os.geteuid() != 0:
        pytest.skip("real sockets in a network namespace need root (unshare -n)")
    if not shutil.which("unshare") or not shutil.which("ip"):
        pytest.skip("real sockets need unshare (util-linux) and ip (iproute2)")


def in_netns(code: str) -> dict[str, Any]:
    """Run `code` in a fresh network namespace and return its sockets as sample sections (and, under
    `extra`, whatever JSON the code left in a global `EXTRA`)."""
    available()
    setup = "".join(f"ip addr add {a}/32 dev lo && " for a in ADDRESSES) + "ip link set lo up"
    script = "import subprocess\n" + f"subprocess.run({setup!r}, shell=True, check=True)\n"
    script += textwrap.dedent(code) + "\n" + _READER
    r = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout.split("SOCKETS", 1)[1])
    sections: dict[str, Any] = {"listening": [], "connections": [], "unconnected_sockets": []}
    if doc["extra"] is not None:
        sections["extra"] = doc["extra"]  # what the code put in EXTRA (e.g. a process's fd links)
    for s in doc["sockets"]:
        if s["local"][0] in OUTSIDE:
            continue  # the far end's sockets: the outside host's, not the pod's
        local = {"address": s["local"][0], "port": s["local"][1]}
        remote = {"address": s["remote"][0], "port": s["remote"][1]}
        state = _STATES[s["state"]]
        entry: dict[str, Any] = {"proto": s["proto"], "local": local, "pid": 27, "inode": s["inode"] or None}
        if state == "LISTEN" and s["proto"].startswith("tcp"):
            sections["listening"].append(entry)
        elif remote["port"] or (remote["address"] not in ("0.0.0.0", "::")):
            sections["connections"].append({**entry, "remote": remote, "state": state})
        else:
            sections["unconnected_sockets"].append(entry)
    return sections
