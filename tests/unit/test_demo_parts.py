"""The demo's pure parts: the GPU trace it writes for the sensor's replay, and the scenarios it accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainguard.api.sample import Sample
from trainguard.cli.demo import DemoError, gpu_trace, load_scenario, remotes_of, trace_acts
from trainguard.sensor.gpu import load_trace


def test_the_miner_trace_puts_xmrig_on_the_gpu_from_its_tick_with_the_real_pids_filled_in(tmp_path: Path) -> None:
    template = tmp_path / "gpu.in"
    gpu_trace(template, "rome-demo/rome-1", miner_at=3)
    # What the demo pod does before it starts the sensor: the placeholders become the trainer's and the stub's pids.
    trace = tmp_path / "gpu.jsonl"
    trace.write_text(template.read_text().replace('"pid": -1', '"pid": 3').replace('"pid": -2', '"pid": 4'))
    ticks = load_trace(trace)
    assert len(ticks) == 4
    assert [[p.name for p in g.processes] for g in ticks[2]] == [["python3"]]
    assert [[(p.pid, p.name) for p in g.processes] for g in ticks[3]] == [[(3, "python3"), (4, "xmrig")]]
    assert ticks[3][0].utilization == 1.0


def test_a_benign_worker_trace_is_one_held_tick_of_training(tmp_path: Path) -> None:
    gpu_trace(tmp_path / "gpu.in", "rome-demo/rome-0", miner_at=None)
    assert (tmp_path / "gpu.in").read_text().count("\n") == 1
    assert "xmrig" not in (tmp_path / "gpu.in").read_text()


def test_scenarios_whose_signals_are_gpu_telemetry_are_accepted_with_their_policy() -> None:
    assert load_scenario("rome") is None
    miner = load_scenario("renamed-miner")
    assert miner is not None and miner.kind == "attack" and miner.expect == {"gpu.mining-signature"}
    assert len(miner.gpus) == 2 and miner.policy["gpu"]
    benign = load_scenario("ddp-nccl")
    assert benign is not None and benign.expect == set()


def test_process_and_socket_scenarios_play_the_recorded_processes_with_their_sockets() -> None:
    ssh = load_scenario("reverse-ssh")
    assert ssh is not None and ssh.expect_by_pod == {0: {"process.denied", "net.tunnel", "net.egress.undeclared"}}
    [act] = ssh.acts[0]
    assert act["kind"] == "process" and act["name"] == "ssh" and "-R" in act["argv"] and act["at"] == 0
    assert act["connect"] == [{"proto": "tcp", "address": "192.0.2.10", "port": 22, "state": "ESTABLISHED"}]
    assert ssh.acts[1] == [] and remotes_of(ssh.acts[0]) == {("192.0.2.10", 22)}
    listener = load_scenario("hidden-listener")
    assert listener is not None and listener.acts[0][0]["listen"] == [8081]
    assert listener.acts[0][0]["connect"] == []  # the download comes from another pod: not played


def test_a_reverse_shell_a_beacon_and_sensor_gaps_are_played() -> None:
    v2 = load_scenario("redteam-v2")
    assert v2 is not None and v2.expect_by_pod == {
        1: {"process.reverse-shell", "net.egress.undeclared"},
        0: {"sensor.gap"},
    }
    shell, beacon = v2.acts[1]
    assert shell["name"] == "bash" and shell["stdin"] and shell["connect"][0]["port"] == 443
    assert beacon["connect"] == [{"proto": "tcp", "address": "192.0.2.30", "port": 8443, "state": "TIME_WAIT"}]
    assert [(a["kind"], a["seconds"]) for a in v2.acts[0]] == [("freeze", 7.0), ("freeze", 7.0)]
    tamper = load_scenario("sensor-tamper")
    assert tamper is not None and tamper.acts[1] == [{"at": 0.0, "kind": "restart", "seconds": 25.0}]
    assert tamper.length == 25.0


def test_a_process_is_played_once_with_the_sockets_it_owns_later() -> None:
    first = Sample(ts=100.0, pod="ns/p", seq=0)
    later = [
        Sample.model_validate({"ts": 100.0 + i, "pod": "ns/p", "seq": i, "processes": [
            {"pid": 7, "name": "nc", "argv": ["nc", "198.51.100.9", "4444"]}], "connections": [
            {"proto": "tcp", "local": {"address": "10.0.0.1", "port": 5000},
             "remote": {"address": "198.51.100.9", "port": 4444}, "state": "ESTABLISHED", "pid": 7}] if i > 2 else []})
        for i in range(1, 5)
    ]  # fmt: skip
    [[act]] = trace_acts([[first, *later]], frozenset())
    assert act["at"] == 0 and act["name"] == "nc"
    assert act["connect"] == [{"proto": "tcp", "address": "198.51.100.9", "port": 4444, "state": "ESTABLISHED"}]


def test_an_unknown_scenario_is_refused_with_the_list() -> None:
    with pytest.raises(DemoError, match="not a scenario; choose rome or one of"):
        load_scenario("no-such")
