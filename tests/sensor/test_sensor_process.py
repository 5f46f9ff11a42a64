"""The real `trainguard sensor` process against real processes and sockets on this machine.

Every wait polls with a deadline (`wait_for`); every spawned process is killed in teardown.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.polling import wait_for
from trainguard.api.sample import GpuProcess, GpuSample, Sample

TRAINGUARD = str(Path(sys.executable).with_name("trainguard"))
_NOT_YET = (OSError, ValueError, urllib.error.URLError)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class Workload:
    listener: subprocess.Popen[bytes]
    listener_port: int
    server_port: int
    client: subprocess.Popen[bytes]
    miner: subprocess.Popen[bytes]


LISTEN = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(8)
conns = []
while True:
    c, _ = s.accept(); conns.append(c)
"""

CONNECT = """
import socket, sys, time
c = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
time.sleep(600)
"""


def _spawn(*argv: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _can_connect(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workload]:
    spawned: list[subprocess.Popen[bytes]] = []
    try:
        listener_port = free_port()
        listener = _spawn(sys.executable, "-c", LISTEN, str(listener_port))
        spawned.append(listener)
        server_port = 3333 if port_is_free(3333) else free_port()  # the pool port a miner would dial
        server = _spawn(sys.executable, "-c", LISTEN, str(server_port))
        spawned.append(server)
        wait_for(
            lambda: _can_connect(listener_port) and _can_connect(server_port),
            15,
            "the listeners",
            interval=0.05,
            ignoring=_NOT_YET,
        )
        client = _spawn(sys.executable, "-c", CONNECT, str(server_port))
        spawned.append(client)
        miner_binary = tmp_path_factory.mktemp("bin") / "xmrig"
        shutil.copy("/bin/sleep", miner_binary)
        miner = _spawn(str(miner_binary), "600")
        spawned.append(miner)
        yield Workload(listener, listener_port, server_port, client, miner)
    finally:
        for proc in spawned:
            proc.kill()
        for proc in spawned:
            proc.wait(10)


def write_trace(path: Path) -> Path:
    samples = [
        Sample(
            ts=i,
            pod="rec/pod",
            seq=i,
            gpus=[
                GpuSample(
                    index=0,
                    uuid="GPU-replay",
                    utilization=u,
                    memory_used_bytes=1 << 30,
                    memory_total_bytes=80 << 30,
                    power_watts=250.0,
                    sm_clock_mhz=1980,
                    processes=[GpuProcess(pid=4242, name="python", argv=["python", "train.py"], used_memory_bytes=1)],
                )
            ],
        )
        for i, u in enumerate([0.5, 0.97])
    ]
    path.write_text("".join(s.model_dump_json(by_alias=True) + "\n" for s in samples))
    return path


@dataclass
class Sensor:
    process: subprocess.Popen[bytes]
    base: str

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=timeout) as response:
                return int(response.status), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def sample(self) -> Sample:
        status, body = self.get("/v1/sample")
        assert status == 200
        return Sample.model_validate_json(body)


@pytest.fixture(scope="module")
def sensor(tmp_path_factory: pytest.TempPathFactory, workload: Workload) -> Iterator[Sensor]:
    port = free_port()
    trace = write_trace(tmp_path_factory.mktemp("trace") / "gpu.jsonl")
    argv = [TRAINGUARD, "sensor", "--port", str(port), "--address", "127.0.0.1", "--gpu-source", "replay"]
    argv += ["--gpu-trace", str(trace), "--interval", "0.2", "--pod", "test/sensor"]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    handle = Sensor(process, f"http://127.0.0.1:{port}")
    try:
        wait_for(
            lambda: handle.get("/v1/sample", timeout=1)[0] == 200,
            15,
            "the sensor's first sample",
            interval=0.05,
            ignoring=_NOT_YET,
        )
        yield handle
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def test_sample_shows_the_workload(sensor: Sensor, workload: Workload) -> None:
    def everything_seen() -> Sample | None:
        s = sensor.sample()
        pids = {p.pid: p for p in s.processes}
        listening = {(x.local.port, x.pid) for x in s.listening}
        conns = {(c.remote.address, c.remote.port, c.pid, c.state) for c in s.connections}
        ok = (
            workload.miner.pid in pids
            and (workload.listener_port, workload.listener.pid) in listening
            and ("127.0.0.1", workload.server_port, workload.client.pid, "ESTABLISHED") in conns
        )
        return s if ok else None

    s = wait_for(everything_seen, 15, "the workload in /v1/sample", interval=0.05, ignoring=_NOT_YET)
    miner = next(p for p in s.processes if p.pid == workload.miner.pid)
    assert (miner.name, miner.ppid, miner.uid) == ("xmrig", os.getpid(), os.getuid())
    assert miner.argv[0].endswith("xmrig") and miner.argv[-1] == "600"
    assert miner.exe.endswith("/xmrig") and miner.exe_status == "ok"
    assert s.sensor.reader == "netlink"
    assert s.pod == "test/sensor"
    assert [g.uuid for g in s.gpus] == ["GPU-replay"]
    assert s.gpus[0].processes[0].argv == ["python", "train.py"]
    assert s.sensor.version == "0.1.0"
    me = next(p for p in s.processes if p.pid == sensor.process.pid)
    assert "sensor" in me.argv


def test_stream_gives_one_sample_per_tick_with_seq_increasing(sensor: Sensor) -> None:
    with urllib.request.urlopen(sensor.base + "/v1/samples", timeout=10) as stream:
        assert stream.headers["Content-Type"] == "application/x-ndjson"
        seqs = [Sample.model_validate_json(stream.readline()).seq for _ in range(4)]
    assert seqs == list(range(seqs[0], seqs[0] + 4))
    utilizations = set()
    with urllib.request.urlopen(sensor.base + "/v1/samples", timeout=10) as stream:
        for _ in range(4):
            utilizations.add(json.loads(stream.readline())["gpus"][0]["utilization"])
    assert utilizations == {0.5, 0.97}  # the replay loops over its two samples


def test_a_stalled_reader_does_not_hold_up_others(sensor: Sensor) -> None:
    stalled = [socket.create_connection(("127.0.0.1", int(sensor.base.rsplit(":", 1)[1]))) for _ in range(3)]
    try:
        for s in stalled:
            s.sendall(b"GET /v1/samples HTTP/1.0\r\n\r\n")  # and never read
        with urllib.request.urlopen(sensor.base + "/v1/samples", timeout=10) as stream:
            started = time.monotonic()
            seqs = [Sample.model_validate_json(stream.readline()).seq for _ in range(5)]
            elapsed = time.monotonic() - started
        assert seqs == sorted(seqs) and elapsed < 5
        status, body = sensor.get("/metrics")
        assert status == 200 and b"trainguard_sensor_stream_clients" in body
    finally:
        for s in stalled:
            s.close()


def _metric(body: bytes, prefix: str) -> float | None:
    for line in body.decode().splitlines():
        if line.startswith(prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_metrics(sensor: Sensor, workload: Workload) -> None:
    def scraped() -> bytes | None:
        status, body = sensor.get("/metrics")
        established = _metric(body, 'trainguard_sensor_connections{proto="tcp",state="ESTABLISHED"}')
        return body if status == 200 and established and established >= 2 else None

    body = wait_for(scraped, 15, "connections in /metrics", interval=0.05, ignoring=_NOT_YET)
    text = body.decode()
    listening = _metric(body, 'trainguard_sensor_listening_sockets{proto="tcp"}')
    assert listening is not None and listening >= 2
    assert 'trainguard_sensor_gpu_utilization_ratio{gpu="0",uuid="GPU-replay"}' in text
    assert 'trainguard_sensor_gpu_power_watts{gpu="0",uuid="GPU-replay"} 250.0' in text
    assert 'trainguard_sensor_gpu_memory_used_bytes{gpu="0",uuid="GPU-replay"} 1.073741824e+09' in text
    assert 'trainguard_sensor_gpu_processes{gpu="0",uuid="GPU-replay"} 1.0' in text
    assert "trainguard_sensor_sample_duration_seconds_bucket" in text
    assert 'trainguard_sensor_errors_total{kind="gpu_stale"} 0.0' in text
    assert "pid=" not in text


def test_metrics_pass_promtool(sensor: Sensor) -> None:
    """Prometheus' own linter accepts the exposition: names, units, types and help texts."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: run `make tools` (scripts/controlplane tools)"
    status, body = sensor.get("/metrics")
    assert status == 200
    checked = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30, check=False)
    assert checked.returncode == 0 and not checked.stdout.strip(), (checked.stdout + checked.stderr).decode()


def test_healthz_and_unknown_paths(sensor: Sensor) -> None:
    assert sensor.get("/healthz")[0] == 200
    assert sensor.get("/nope")[0] == 404


def _run(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([TRAINGUARD, "sensor", *argv], capture_output=True, timeout=timeout, check=False)


def test_record_writes_a_trace_that_replays(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    done = _run("--record", str(out), "--duration", "1", "--interval", "0.25", "--gpu-source", "nvml")
    assert done.returncode == 0, done.stderr.decode()
    samples = [Sample.model_validate_json(line) for line in out.read_bytes().splitlines()]
    # One sample per tick, seq from 0 without gaps. How many ticks fit in the duration depends on the
    # machine's load (a tick whose collection overruns repeats the last state), so only a floor is asserted.
    assert len(samples) >= 2 and [s.seq for s in samples] == list(range(len(samples)))
    # No driver on this machine: gpus [] and an error entry, never a crash.
    assert all(s.gpus == [] for s in samples)
    assert any(e.kind == "gpu_unavailable" for s in samples for e in s.sensor.errors)
    assert any(p.pid == os.getpid() for s in samples for p in s.processes)
    # The recording is a valid replay trace.
    again = _run("--record", str(tmp_path / "2.jsonl"), "--duration", "0.2", "--interval", "0.1")
    assert again.returncode == 0
    replay = _run(
        "--record", str(tmp_path / "3.jsonl"), "--duration", "0.1", "--gpu-source", "replay", "--gpu-trace", str(out)
    )
    assert replay.returncode == 0, replay.stderr.decode()


def test_a_bad_trace_or_a_busy_port_exits_non_zero(tmp_path: Path, sensor: Sensor) -> None:
    (tmp_path / "bad.jsonl").write_text("not json\n")
    assert _run("--gpu-source", "replay", "--gpu-trace", str(tmp_path / "bad.jsonl")).returncode == 2
    port = sensor.base.rsplit(":", 1)[1]
    busy = _run("--port", port, "--address", "127.0.0.1", "--gpu-source", "none", "--duration", "1")
    assert busy.returncode == 1 and b"cannot serve" in busy.stderr
