"""The cut, end to end: real tunnels from a pod's network + pid namespace to a listener outside it, a sensor
serving the authenticated protocol, and signed, forged, replayed and stale commands.

The test makes two network namespaces (cut_world.py): the "world" (its listeners: the attacker's end of a python
tunnel and of an nc tunnel, and an allowed peer) and the pod (pid 1 of its own pid namespace, the clients, the
sensor). The test's own sockets enter the world namespace by setns(2) in a thread of their own; all traffic stays
on the veth pair between the two namespaces.
"""

from __future__ import annotations

import ctypes
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.polling import wait_for
from tests.sensor import cut_world
from trainguard.api import sensorproto
from trainguard.api.sample import Sample
from trainguard.api.sensorproto import AllowedPeer, CutCommand, CutReport

TRAINGUARD = str(Path(sys.executable).with_name("trainguard"))
POD = "test/cutpod"
CLONE_NEWNET = 0x40000000
T = TypeVar("T")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: it creates pid and network namespaces"),
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in ("unshare", "ip", "nc")), reason="needs unshare, ip and nc"
    ),
]


@dataclass
class Peer:
    """A listener in the world namespace: counts the bytes each accepted connection brings, notes how it ended."""

    sock: socket.socket
    received: int = 0
    ended: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def serve(self) -> None:
        conn, _ = self.sock.accept()
        conn.settimeout(None)
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    self.ended = "EOF"
                    return
                with self.lock:
                    self.received += len(data)
        except OSError as exc:
            self.ended = type(exc).__name__


@dataclass
class World:
    work: Path
    netns: str
    key: bytes
    manifest: dict[str, int]
    peers: dict[str, Peer]

    def run(self, fn: Callable[[], T]) -> T:
        """fn() in a fresh thread that has entered the world's network namespace (so do its sockets)."""
        box: dict[str, Any] = {}

        def body() -> None:
            try:
                enter_netns(self.netns)
                box["value"] = fn()
            except BaseException as exc:
                box["error"] = exc

        thread = threading.Thread(target=body, daemon=True)
        thread.start()
        thread.join(30)
        if "error" in box:
            raise box["error"]
        return box["value"]  # type: ignore[no-any-return]

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        def go() -> tuple[int, dict[str, str], bytes]:
            conn = http.client.HTTPConnection(cut_world.POD, cut_world.SENSOR_PORT, timeout=10)
            try:
                conn.request(method, path, body=body, headers=headers or {})
                response = conn.getresponse()
                return response.status, dict(response.headers), response.read()
            finally:
                conn.close()

        return self.run(go)

    def credential(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {sensorproto.pod_credential(self.key, POD)}"}

    def cut(self, command: CutCommand, key: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        body = command.model_dump_json(by_alias=True).encode()
        return self.post(body, sensorproto.sign_command(key or self.key, body))

    def post(self, body: bytes, signature: str) -> tuple[int, dict[str, str], bytes]:
        headers = {**self.credential(), sensorproto.SIGNATURE_HEADER: signature, "Content-Type": "application/json"}
        return self.request("POST", sensorproto.CUT_PATH, body, headers)

    def host_pid(self, role: str) -> int:
        """The host's pid of a pod process (the manifest has pids in the pod's namespace)."""
        marker = str(self.work).encode()  # every pod process has the work directory in its argv
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                argv = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
                status = Path(f"/proc/{name}/status").read_text()
            except OSError:
                continue
            nspid = next((line.split()[-1] for line in status.splitlines() if line.startswith("NSpid:")), "")
            if any(marker in arg for arg in argv) and nspid == str(self.manifest[role]):
                return int(name)
        raise AssertionError(f"no process for {role}")

    def state(self, role: str) -> str:
        return Path(f"/proc/{self.host_pid(role)}/stat").read_text().rsplit(")", 1)[1].split()[0]


def enter_netns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
    finally:
        os.close(fd)


def grows(peer: Peer, what: str, timeout: float = 10) -> None:
    start = peer.received
    wait_for(lambda: peer.received > start + 200, timeout, f"bytes through {what}", interval=0.05)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    key = os.urandom(32) + b"\n"  # the file's bytes exactly, trailing "whitespace" included, as in a Secret
    (tmp_path / "key").write_bytes(key)
    argv = ["unshare", "--net", "--pid", "--fork", "--mount-proc", "--kill-child", sys.executable, cut_world.__file__]
    process = subprocess.Popen([*argv, str(tmp_path), TRAINGUARD], stderr=subprocess.PIPE)
    try:

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"the world exited: {process.stderr.read().decode() if process.stderr else ''}")
            return (tmp_path / "world-ready").exists()

        wait_for(ready, 20, "the world namespace")
        handle = World(tmp_path, f"/proc/{process.pid}/ns/net", key, {}, {})

        def listen() -> dict[str, Peer]:
            peers = {}
            for name, port in (("tunnel", cut_world.TUNNEL_PORT), ("nc", cut_world.NC_PORT)):
                peers[name] = Peer(socket.create_server((cut_world.WORLD, port)))
            peers["allowed"] = Peer(socket.create_server((cut_world.WORLD, cut_world.ALLOWED_PORT)))
            return peers

        handle.peers = handle.run(listen)
        for peer in handle.peers.values():
            threading.Thread(target=peer.serve, daemon=True).start()
        (tmp_path / "go").write_text("")
        path = tmp_path / "manifest.json"
        handle.manifest = wait_for(lambda: path.exists() and json.loads(path.read_text()), 20, "the pod's manifest")
        wait_for(
            lambda: handle.request("GET", "/healthz")[0] == 200,
            30,
            "the sensor's first sample",
            ignoring=(OSError, http.client.HTTPException),
        )
        yield handle
    finally:
        process.kill()
        process.wait()
        for peer in handle.peers.values():
            peer.sock.close()


def command(**fields: Any) -> CutCommand:
    base: dict[str, Any] = {
        "pod": POD,
        "nonce": uuid.uuid4().hex,
        "issued_at": time.time(),
        "keep": [AllowedPeer(cidr=f"{cut_world.WORLD}/32", ports=[cut_world.ALLOWED_PORT])],
    }
    return CutCommand(**(base | fields))


def report_of(world: World, status: int, headers: dict[str, str], body: bytes) -> CutReport:
    assert status == 200, body
    assert sensorproto.report_ok(world.key, body, headers.get(sensorproto.SIGNATURE_HEADER)), "unsigned report"
    return CutReport.model_validate_json(body)


def test_the_protocol_refuses_what_lacks_the_pods_credential(world: World) -> None:
    assert world.request("GET", "/healthz")[0] == 200  # open: the kubelet's probe has no credential
    assert world.request("GET", "/metrics")[0] == 200
    status, _, body = world.request("GET", "/v1/sample")
    assert status == 403 and b"/v2" in body  # the unauthenticated endpoints are off when there is a key
    assert world.request("GET", sensorproto.SAMPLE_PATH)[0] == 401
    other = {"Authorization": f"Bearer {sensorproto.pod_credential(world.key, 'test/another-pod')}"}
    assert world.request("GET", sensorproto.SAMPLE_PATH, headers=other)[0] == 401
    status, _, line = world.request("GET", sensorproto.SAMPLE_PATH, headers=world.credential())
    assert status == 200
    sample = Sample.model_validate_json(sensorproto.verify_sample(world.key, line))
    assert sample.pod == POD
    remotes = {(c.remote.address, c.remote.port) for c in sample.connections}
    assert (cut_world.WORLD, cut_world.TUNNEL_PORT) in remotes


def test_a_signed_cut_stops_the_tunnels_keeps_the_allowed_peer_and_the_sensors_stream(world: World) -> None:
    for name in ("tunnel", "nc", "allowed"):
        grows(world.peers[name], name)
    lines: list[bytes] = []

    def stream() -> None:  # the operator's stream, opened before the cut: not in keep, the sensor's own socket
        conn = socket.create_connection((cut_world.POD, cut_world.SENSOR_PORT), timeout=10)
        auth = world.credential()["Authorization"]
        conn.sendall(f"GET {sensorproto.SAMPLES_PATH} HTTP/1.0\r\nAuthorization: {auth}\r\n\r\n".encode())
        reader = conn.makefile("rb")

        def pump() -> None:
            for line in reader:
                lines.append(line)

        threading.Thread(target=pump, daemon=True).start()

    world.run(stream)
    wait_for(lambda: len(lines) > 6, 10, "the stream's first samples")

    # Forged, unsigned and another key's commands: refused, nothing changes.
    forged = command(pids=[world.manifest["tunnel"]], signal="KILL")
    body = forged.model_dump_json(by_alias=True).encode()
    assert world.post(body, "0" * 64)[0] == 401
    assert world.cut(forged, key=b"not-the-jobs-key-at-all")[0] == 401
    status, _, _ = world.request("POST", sensorproto.CUT_PATH, body, {sensorproto.SIGNATURE_HEADER: "x"})
    assert status == 401  # no credential
    assert world.cut(command(issued_at=time.time() - 3600))[0] == 409  # stale
    assert world.cut(command(pod="test/another-pod"))[0] == 403
    grows(world.peers["tunnel"], "the tunnel after the refused commands")
    assert world.state("tunnel") in "SR"

    started = time.monotonic()
    cut = command(pids=[world.manifest["tunnel"]])
    signed = cut.model_dump_json(by_alias=True).encode()
    signature = sensorproto.sign_command(world.key, signed)
    report = report_of(world, *world.post(signed, signature))
    took = time.monotonic() - started
    remotes = {(s.remote.address, s.remote.port) for s in report.destroyed}
    assert (cut_world.WORLD, cut_world.TUNNEL_PORT) in remotes and (cut_world.WORLD, cut_world.NC_PORT) in remotes
    assert (cut_world.WORLD, cut_world.ALLOWED_PORT) not in remotes
    assert report.stopped == [world.manifest["tunnel"]]
    assert report.confirmed, report
    assert all(s.pid is not None for s in report.destroyed)  # the holder is named (the evidence)

    # The tunnels are reset at the remote end: no byte can come through them any more.
    for name in ("tunnel", "nc"):
        wait_for(lambda name=name: world.peers[name].ended, 5, f"the {name} connection to end", interval=0.02)  # type: ignore[misc]
    assert world.peers["tunnel"].ended == "ConnectionResetError"
    assert world.state("tunnel") == "T"  # stopped, kept for forensics
    grows(world.peers["allowed"], "the allowed connection after the cut")
    seen = len(lines)
    wait_for(lambda: len(lines) > seen + 2, 10, "the operator's stream after the cut")
    sensorproto.verify_sample(world.key, lines[-1])

    # Replayed: refused, nothing signalled again. A new cut: nothing new to destroy, confirmed.
    assert world.post(signed, signature)[0] == 409
    again = report_of(world, *world.cut(command()))
    assert again.destroyed == [] and again.remaining == [] and again.confirmed
    grows(world.peers["allowed"], "the allowed connection after the second cut")
    print(f"cut answered in {took * 1000:.1f} ms: {len(report.destroyed)} sockets destroyed")


def test_the_sensor_and_pid_1_are_never_signalled(world: World) -> None:
    sensor = world.manifest["sensor"]
    report = report_of(world, *world.cut(command(pids=[1, sensor], signal="KILL")))
    assert report.stopped == [] and not report.confirmed
    assert len(report.errors) == 2 and all("never signalled" in e for e in report.errors)
    assert world.request("GET", "/healthz")[0] == 200
    assert world.state("sensor") in "SR"


def test_an_offenders_connection_to_a_kept_remote_is_cut_too(world: World) -> None:
    """A reverse shell to an allowed address is still the attack: `keep` spares the connections of processes the
    command does not name, never the named offender's own sockets."""
    grows(world.peers["allowed"], "the allowed connection before its holder is named")
    report = report_of(world, *world.cut(command(pids=[world.manifest["allowed"]])))
    remotes = {(s.remote.address, s.remote.port) for s in report.destroyed}
    assert (cut_world.WORLD, cut_world.ALLOWED_PORT) in remotes, report
    assert report.stopped == [world.manifest["allowed"]] and report.confirmed, report
    wait_for(lambda: world.peers["allowed"].ended, 5, "the allowed connection to end", interval=0.02)
