"""The demo's pure parts: the GPU trace it writes for the sensor's replay, and the scenarios it accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainguard.cli.demo import DemoError, gpu_trace, load_scenario
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


def test_other_scenarios_are_refused_with_the_replay_command() -> None:
    with pytest.raises(DemoError, match=r"trainguard replay examples/traces/reverse-ssh.jsonl --policy"):
        load_scenario("reverse-ssh")
    with pytest.raises(DemoError, match="not a scenario; choose rome or one of"):
        load_scenario("no-such")
