"""Builders of samples and policies for the detection tests: small, explicit, one fact at a time."""

from __future__ import annotations

from typing import Any

from trainguard.api.sample import Sample
from trainguard.api.v1alpha1 import Policy

T0 = 1767225600.0
GIB = 1024**3
POD = "agents/worker-0"
POD_IP = "10.244.1.10"


def policy(**spec: Any) -> Policy:
    """A Policy from camelCase keyword arguments, as in YAML: policy(network={"listenPorts": [80]})."""
    return Policy.model_validate(spec)


def proc(pid: int, name: str, cmdline: str | None = None, ppid: int = 1) -> dict[str, Any]:
    return {"pid": pid, "ppid": ppid, "name": name, "cmdline": cmdline if cmdline is not None else name}


def gpu(
    index: int = 0,
    *,
    util: float = 0.9,
    memory: float = 60 * GIB,
    power: float = 500.0,
    procs: list[dict[str, Any]] | None = None,
    total: int = 80 * GIB,
) -> dict[str, Any]:
    return {
        "index": index,
        "uuid": f"GPU-test-{index}",
        "utilization": util,
        "memoryUsedBytes": int(memory),
        "memoryTotalBytes": total,
        "powerWatts": power,
        "processes": procs
        if procs is not None
        else [{"pid": 4000 + index, "name": "python3", "cmdline": "python3 train.py"}],
    }


def conn(
    remote: str,
    *,
    local_port: int = 50000,
    state: str = "ESTABLISHED",
    proto: str = "tcp",
    pid: int | None = 27,
    local_ip: str = POD_IP,
) -> dict[str, Any]:
    local = f"[{local_ip}]:{local_port}" if ":" in local_ip else f"{local_ip}:{local_port}"
    return {"proto": proto, "local": local, "remote": remote, "state": state, "pid": pid}


def listen(port: int, address: str = "0.0.0.0", proto: str = "tcp", pid: int | None = 27) -> dict[str, Any]:
    return {"proto": proto, "address": address, "port": port, "pid": pid}


def sample(
    t: float = 0.0,
    *,
    seq: int | None = None,
    pod: str = POD,
    gpus: list[dict[str, Any]] | None = None,
    processes: list[dict[str, Any]] | None = None,
    listening: list[dict[str, Any]] | None = None,
    connections: list[dict[str, Any]] | None = None,
    dcgm: dict[str, float] | None = None,
) -> Sample:
    """A sample at T0 + t; seq defaults to t (one sample a second)."""
    return Sample.model_validate(
        {
            "ts": T0 + t,
            "pod": pod,
            "seq": int(t) if seq is None else seq,
            "gpus": gpus if gpus is not None else [],
            "processes": processes if processes is not None else [proc(1, "python3", "python3 train.py", ppid=0)],
            "listening": listening or [],
            "connections": connections or [],
            "dcgm": dcgm or {},
        }
    )
