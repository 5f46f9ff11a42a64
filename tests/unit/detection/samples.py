"""Builders of version-2 samples and policies for the detection tests: small, explicit, one fact at a time.

The samples are built as the v2 sensor reports them: structured endpoints, argv lists, the
executable and container of every process, sockets without a peer in `unconnected`.
"""

from __future__ import annotations

from typing import Any

from trainguard.api.sample import Sample
from trainguard.api.v1alpha1 import Policy
from trainguard.detection import EngineContext

T0 = 1767225600.0
GIB = 1024**3
POD = "agents/worker-0"
POD_IP = "10.244.1.10"
PEER_IP = "10.244.2.11"
DNS = "10.96.0.10"
#: The cluster facts the operator would read from the API server for the test job.
CTX = EngineContext(dns_resolvers=frozenset({DNS}), job_pod_ips=frozenset({POD_IP, PEER_IP}))


def policy(**spec: Any) -> Policy:
    """A Policy from camelCase keyword arguments, as in YAML: policy(network={"listenPorts": [80]})."""
    return Policy.model_validate(spec)


def proc(
    pid: int,
    name: str,
    cmdline: str | None = None,
    *,
    ppid: int = 1,
    exe: str | None = None,
    argv: list[str] | None = None,
    container: str = "trainer",
    exe_status: str = "ok",
    stdin: dict[str, Any] | None = None,
    stdout: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A process; its argv is the command line split on spaces unless given, its exe /usr/bin/<name>."""
    args = argv if argv is not None else (cmdline if cmdline is not None else name).split()
    out: dict[str, Any] = {
        "pid": pid,
        "ppid": ppid,
        "name": name[:15],
        "exe": (exe if exe is not None else f"/usr/bin/{name}") if exe_status == "ok" else "",
        "exeStatus": exe_status,
        "argv": args,
        "container": container,
        "stdin": stdin or {"kind": "pipe", "target": "pipe:[1]"},
        "stdout": stdout or {"kind": "pipe", "target": "pipe:[2]"},
    }
    return out


def socket_stream(inode: int) -> dict[str, Any]:
    return {"kind": "socket", "target": f"socket:[{inode}]", "inode": inode}


def gpu(
    index: int = 0,
    *,
    util: float | None = 0.9,
    memory: float | None = 60 * GIB,
    power: float | None = 500.0,
    procs: list[dict[str, Any]] | None = None,
    total: int = 80 * GIB,
) -> dict[str, Any]:
    return {
        "index": index,
        "uuid": f"GPU-test-{index}",
        "utilization": util,
        "memoryUsedBytes": int(memory) if memory is not None else None,
        "memoryTotalBytes": total,
        "powerWatts": power,
        "processes": procs
        if procs is not None
        else [{"pid": 4000 + index, "name": "python3", "exe": "/usr/bin/python3", "argv": ["python3", "train.py"]}],
    }


def _ep(text: str) -> dict[str, Any]:
    host, _, port = text.rpartition(":")
    return {"address": host.strip("[]"), "port": int(port)}


def conn(
    remote: str,
    *,
    local_port: int = 50000,
    state: str = "ESTABLISHED",
    proto: str = "tcp",
    pid: int | None = 27,
    local_ip: str = POD_IP,
    inode: int | None = None,
) -> dict[str, Any]:
    """A socket with a peer: `remote` as `a.b.c.d:port` or `[v6]:port`."""
    return {
        "proto": proto,
        "local": {"address": local_ip, "port": local_port},
        "remote": _ep(remote),
        "state": state,
        "pid": pid,
        "inode": inode,
    }


def listen(port: int, address: str = "0.0.0.0", proto: str = "tcp", pid: int | None = 27) -> dict[str, Any]:
    return {"proto": proto, "local": {"address": address, "port": port}, "pid": pid}


def unconnected(proto: str, address: str = "0.0.0.0", port: int = 0, pid: int | None = 27) -> dict[str, Any]:
    return {"proto": proto, "local": {"address": address, "port": port}, "pid": pid}


def sample(
    t: float = 0.0,
    *,
    seq: int | None = None,
    pod: str = POD,
    gpus: list[dict[str, Any]] | None = None,
    processes: list[dict[str, Any]] | None = None,
    listening: list[dict[str, Any]] | None = None,
    connections: list[dict[str, Any]] | None = None,
    unconnected_sockets: list[dict[str, Any]] | None = None,
    dcgm: dict[str, float] | None = None,
    errors: list[dict[str, Any]] | None = None,
    reader: str = "netlink",
) -> Sample:
    """A sample at T0 + t; seq defaults to t (one sample a second)."""
    return Sample.model_validate(
        {
            "version": 2,
            "ts": T0 + t,
            "pod": pod,
            "seq": int(t) if seq is None else seq,
            "gpus": gpus if gpus is not None else [gpu()],
            "processes": processes if processes is not None else [proc(27, "python3", "python3 train.py")],
            "listening": listening or [],
            "connections": connections or [],
            "unconnected": unconnected_sockets or [],
            "dcgm": dcgm or {},
            "sensor": {"version": "test", "reader": reader, "errors": errors or []},
        }
    )
