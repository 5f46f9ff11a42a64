"""The sensor against what an attacker runs, each in a pid + network namespace the test makes and removes.

`namespace_pod.py` is pid 1 of the namespaces (`unshare --net --pid --fork --mount-proc`): it starts a raw
and an ICMP echo socket sending a payload, an unconnected UDP sender, a process that execs in place keeping
its name, a dropped binary deleted after start, a binary renamed `pause`, a bulk TCP client, a reverse
shell whose standard streams are a socket, and two sensors recording samples: netlink as shipped, and one
under a seccomp filter refusing netlink (the /proc/net fallback). All traffic is on the namespace's own
loopback. Killing `unshare` kills pid 1, and with it the namespaces.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.polling import wait_for
from trainguard.api.sample import Connection, ProcessInfo, Sample, SensorErrorKind

TRAINGUARD = str(Path(sys.executable).with_name("trainguard"))
POD = str(Path(__file__).with_name("namespace_pod.py"))

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: it creates pid and network namespaces"),
    pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("ip") is None, reason="needs unshare and ip"),
]


@dataclass
class Pod:
    work: Path
    manifest: dict[str, Any]

    def samples(self, reader: str) -> list[Sample]:
        path = self.work / f"{reader}.jsonl"
        if not path.exists():
            return []
        lines = path.read_bytes().splitlines()
        return [Sample.model_validate_json(line) for line in lines if line.endswith(b"}")]

    def wait(self, reader: str, what: str, found: Callable[[Sample], Any], timeout: float = 20) -> Any:
        def check() -> Any:
            for sample in reversed(self.samples(reader)):
                value = found(sample)
                if value:
                    return value
            return None

        return wait_for(check, timeout, f"{what} in the {reader} samples", interval=0.1)

    def process(self, sample: Sample, role: str) -> ProcessInfo | None:
        return next((p for p in sample.processes if p.pid == self.manifest[role]), None)


@pytest.fixture(scope="module")
def pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pod]:
    work = tmp_path_factory.mktemp("pod")
    argv = ["unshare", "--net", "--pid", "--fork", "--mount-proc", "--kill-child", sys.executable, POD]
    process = subprocess.Popen([*argv, str(work), TRAINGUARD], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:

        def manifest() -> dict[str, Any] | None:
            if process.poll() is not None:
                raise AssertionError(f"the pod exited: {process.stderr.read().decode() if process.stderr else ''}")
            path = work / "manifest.json"
            return json.loads(path.read_text()) if path.exists() else None

        handle = Pod(work, wait_for(manifest, 30, "the pod's manifest", interval=0.05))
        handle.wait("netlink", "a first sample", lambda s: s.processes)
        yield handle
    finally:
        process.kill()
        process.wait(10)


def _connection(sample: Sample, pid: int, remote_port: int) -> Connection | None:
    return next((c for c in sample.connections if c.pid == pid and c.remote.port == remote_port), None)


def test_the_netlink_sensor_names_its_reader_and_sees_only_the_namespace(pod: Pod) -> None:
    sample = pod.samples("netlink")[-1]
    assert sample.sensor.reader == "netlink"
    assert not [e for e in sample.sensor.errors if e.kind in (SensorErrorKind.NET_FALLBACK, SensorErrorKind.NET_READ)]
    assert min(p.pid for p in sample.processes) == 1  # the pod's own pid namespace
    ports = {s.local.port for s in sample.listening}
    assert ports == {pod.manifest["server_port"], pod.manifest["shell_port"]}  # no socket of the host


@pytest.mark.parametrize("reader", ["netlink", "proc"])
def test_raw_icmp_echo_and_unconnected_udp_are_unconnected_sockets_never_listeners(pod: Pod, reader: str) -> None:
    raw_icmp, udp = pod.manifest["raw_icmp"], pod.manifest["udp"]

    def seen(s: Sample) -> Sample | None:
        kinds = {(u.proto, u.pid) for u in s.unconnected}
        return s if {("raw", raw_icmp), ("icmp", raw_icmp), ("udp", udp), ("udp6", udp)} <= kinds else None

    sample = pod.wait(reader, "the raw, ICMP echo and UDP senders", seen)
    assert not [s for s in sample.listening if s.pid in (raw_icmp, udp)]
    echo = next(u for u in sample.unconnected if u.proto == "icmp")
    assert echo.local.address == "0.0.0.0" and echo.inode
    udp6 = next(u for u in sample.unconnected if u.proto == "udp6")
    assert udp6.local.address == "::" and udp6.local.port > 0
    assert sample.sensor.reader == reader


def test_an_exec_in_place_is_seen_at_the_next_tick(pod: Pod) -> None:
    pid = pod.manifest["exec"]
    before = pod.wait("netlink", "the process before its exec", lambda s: pod.process(s, "exec"))
    assert "stratum+tcp://pool:3333" not in before.argv
    (pod.work / "exec-now").write_text("")
    exec_time = wait_for(
        lambda: float((pod.work / "exec-time").read_text() or 0), 10, "the exec", ignoring=(OSError, ValueError)
    )

    def after(s: Sample) -> Sample | None:
        return s if s.ts > exec_time + 0.25 else None  # a tick that started after the exec

    pod.wait("netlink", "a sample after the exec", after)
    later = [s for s in pod.samples("netlink") if s.ts > exec_time and not _stale(s)]
    assert later
    for sample in later:  # every tick that began after the exec shows the new arguments, the same pid
        info = pod.process(sample, "exec")
        assert info is not None and info.pid == pid
        assert info.argv[-1] == "stratum+tcp://pool:3333", (sample.ts - exec_time, info.argv)
    assert info.name == before.name  # comm did not change: only the image did


def _stale(sample: Sample) -> bool:
    return any(e.kind is SensorErrorKind.PROC_STALE for e in sample.sensor.errors)


def test_a_deleted_executable_is_marked(pod: Pod) -> None:
    info = pod.wait(
        "netlink",
        "the deleted binary",
        lambda s: (p := pod.process(s, "deleted")) and p.exe_status == "deleted" and p,
    )
    assert info.exe.endswith("/dropped-miner") and info.argv[-1] == "600"


def test_a_renamed_binary_is_known_by_its_executable(pod: Pod) -> None:
    info = pod.wait(
        "netlink", "the renamed process", lambda s: (p := pod.process(s, "renamed")) and p.name == "pause" and p
    )
    assert info.argv[0] == "pause"  # what it calls itself, twice over
    assert os.path.realpath(info.exe) == pod.manifest["python"] and info.exe_status == "ok"  # what it runs


def test_a_tcp_connections_byte_counts_and_age_grow(pod: Pod) -> None:
    bulk, port = pod.manifest["bulk"], pod.manifest["server_port"]

    def grown(s: Sample) -> Connection | None:
        c = _connection(s, bulk, port)
        return c if c is not None and (c.bytes_sent or 0) >= 3 * 4096 else None

    first = pod.wait("netlink", "the bulk connection", grown)
    started = next(s.ts for s in pod.samples("netlink") if _connection(s, bulk, port))
    later = pod.wait(
        "netlink",
        "more bytes on it",
        lambda s: (c := _connection(s, bulk, port)) and (c.bytes_sent or 0) > (first.bytes_sent or 0) and c,
    )
    # The same connection, first seen when the sensor first listed it (within a tick of that sample).
    assert later.inode == first.inode and later.first_seen == first.first_seen
    assert first.first_seen is not None and abs(first.first_seen - started) < 0.5
    assert later.state == "ESTABLISHED" and later.bytes_received == 0  # the server sends nothing back
    server_side = pod.wait(
        "netlink",
        "the server's end",
        lambda s: next(
            (c for c in s.connections if c.pid == pod.manifest["server"] and c.local.port == port and c.bytes_received),
            None,
        ),
    )
    assert server_side.bytes_received and server_side.bytes_received > 0


def test_the_proc_fallback_has_no_byte_counts_and_says_so(pod: Pod) -> None:
    bulk, port = pod.manifest["bulk"], pod.manifest["server_port"]
    sample = pod.wait("proc", "the bulk connection", lambda s: _connection(s, bulk, port) and s)
    assert sample.sensor.reader == "proc"
    fallback = [e for e in sample.sensor.errors if e.kind is SensorErrorKind.NET_FALLBACK]
    assert len(fallback) == 1 and "Operation not permitted" in fallback[0].message
    conn = _connection(sample, bulk, port)
    assert conn is not None and conn.bytes_sent is None and conn.bytes_received is None


def test_a_reverse_shell_has_a_socket_for_its_standard_streams(pod: Pod) -> None:
    shell_port = pod.manifest["shell_port"]

    def shell(s: Sample) -> tuple[ProcessInfo, Connection] | None:
        info = pod.process(s, "shell")
        conn = _connection(s, pod.manifest["shell"], shell_port)
        return (info, conn) if info and conn and info.exe_status == "ok" and info.exe.endswith("sh") else None

    info, conn = pod.wait("netlink", "the shell and its connection", shell)
    assert info.argv == ["sh", "-i"]
    for stream in (info.stdin, info.stdout, info.stderr):
        assert stream is not None and stream.kind == "socket" and stream.inode == conn.inode
