"""What the end-to-end red team found, pinned down on samples shaped as the real sensor wrote them.

These need no root: each is one sample (taken from a recording of tests/redteam, cut down to the
processes and sockets that matter) judged by the real engine.
"""

from __future__ import annotations

from typing import Any

from trainguard.api.sample import Sample
from trainguard.api.v1alpha1 import Policy
from trainguard.detection import Engine, EngineContext
from trainguard.detection.engine import ManualClock

POD = "agents/worker-0"
CTX = EngineContext(job_pod_ips=frozenset({"10.244.1.10"}), dns_resolvers=frozenset({"10.96.0.10"}))
POLICY = Policy.model_validate(
    {"network": {"egress": [{"cidr": "203.0.113.0/24", "ports": [{"port": 443}]}], "listenPorts": [29500]}}
)
SHELL_INODE = 4242


def shell_sample(*, capped: bool, listed: bool, exe: str = "/usr/bin/bash", inode: int = SHELL_INODE) -> Sample:
    """bash -i whose standard streams are socket SHELL_INODE; that connection listed or not; the cap hit or not."""
    stream = {"kind": "socket", "target": f"socket:[{inode}]", "inode": inode}
    conn = {
        "proto": "tcp",
        "local": {"address": "10.244.1.10", "port": 51000},
        "remote": {"address": "203.0.113.40", "port": 443},
        "state": "ESTABLISHED",
        "pid": 31,
        "inode": SHELL_INODE,
    }
    errors = [{"kind": "connection_cap", "message": "more than 4096 sockets of one kind: 1 connections left out"}]
    doc: dict[str, Any] = {
        "version": 2,
        "ts": 1796160000.0,
        "pod": POD,
        "seq": 0,
        "processes": [
            {
                "pid": 31,
                "ppid": 1,
                "name": exe.rsplit("/", 1)[-1][:15],
                "exe": exe,
                "argv": [exe, "-i"],
                "stdin": stream,
                "stdout": stream,
                "stderr": stream,
            }
        ],
        "connections": [conn] if listed else [],
        "sensor": {"reader": "netlink", "errors": errors if capped else []},
    }
    return Sample.model_validate(doc)


def rules(sample: Sample) -> set[str]:
    engine = Engine(POLICY, CTX, ManualClock(sample.ts))
    return {d.violation.rule for d in engine.observe(POD, sample) if d.kind == "new"}


def test_a_shell_whose_socket_was_pushed_out_past_the_cap_is_not_taken_for_a_unix_socket() -> None:
    """A socket stream whose inode is not among the sample's sockets was taken as a unix socket (the sensor
    does not read /proc/net/unix). A workload that opens sockets past the sensor's cap pushes its reverse
    shell's connection out of the sample: then the inode proves nothing, and the shell is not excused."""
    assert "process.reverse-shell" in rules(shell_sample(capped=False, listed=True))
    assert "process.reverse-shell" not in rules(shell_sample(capped=False, listed=False))  # a unix socket
    assert "process.reverse-shell" in rules(shell_sample(capped=True, listed=False))


def test_a_renamed_shell_is_known_by_its_streams_not_its_name() -> None:
    """Every name of a process is the workload's to choose, its executable's file name too (a copy). A
    process of any name whose stdin and stdout are one network socket is a reverse shell; on a unix socket
    it is not."""
    assert "process.reverse-shell" in rules(shell_sample(capped=False, listed=True, exe="/tmp/.x/kworker"))
    assert "process.reverse-shell" not in rules(shell_sample(capped=False, listed=False, exe="/tmp/.x/kworker"))
