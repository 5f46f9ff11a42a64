"""`trainguard replay` as a user runs it: a subprocess, exit codes 0/3/2, text and JSON output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trainguard import cli
from trainguard.cli import replay as command

TRACES = Path(__file__).resolve().parents[3] / "examples" / "traces"
TRAINGUARD = Path(sys.executable).with_name("trainguard")
POLICY = TRACES / "policy-training.yaml"


#: What the operator would read from the API server for the example traces' job (scenarios.json).
CLUSTER = [
    *("--dns-resolver", "10.96.0.10"),
    *("--pod-ip", "10.244.1.10"),
    *("--pod-ip", "10.244.2.11"),
    *("--pod-ip", "10.244.3.12"),
]


def replay(*args: str | Path, cluster: bool = True) -> subprocess.CompletedProcess[str]:
    command = [str(TRAINGUARD), "replay", *map(str, args), *(CLUSTER if cluster else [])]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)


def test_benign_exits_0_with_a_summary() -> None:
    r = replay("--policy", POLICY, TRACES / "ddp-nccl.jsonl")
    assert r.returncode == 0, r.stderr
    assert "300 samples from 3 pods" in r.stdout
    assert "0 violations" in r.stdout


def test_attack_exits_3_with_a_timeline() -> None:
    r = replay("--policy", POLICY, TRACES / "reverse-ssh.jsonl")
    assert r.returncode == 3, r.stderr
    lines = r.stdout.splitlines()
    first = next(line for line in lines if "NEW" in line)
    # time, pod, rule, evidence, action
    assert first.startswith("2026-01-01T00:00:50")
    assert "agents/rl-trainer-worker-0" in first and "Quarantine" in first
    assert any("net.tunnel" in line and "192.0.2.10:22" in line for line in lines)
    assert any(line.strip().startswith("process.denied") for line in lines)


def test_json_output_one_object_per_decision() -> None:
    r = replay("--policy", POLICY, TRACES / "tunnel-443.jsonl", "--output", "json")
    assert r.returncode == 3
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert records and all(
        {"time", "kind", "rule", "severity", "pod", "action", "dryRun", "evidence"} <= rec.keys() for rec in records
    )
    assert {rec["rule"] for rec in records if rec["kind"] == "new"} == {
        "process.denied",
        "net.tunnel",
        "net.egress.undeclared",
    }
    assert "violations" in r.stderr  # the summary goes to stderr, stdout stays machine-readable


def test_a_reader_that_goes_away_ends_it_quietly_as_sigpipe_would() -> None:
    # `trainguard replay ... | head -1`: the pipe's reader closes before replay writes; replay
    # stops with 141 (128 + SIGPIPE), as other tools do, without a traceback.
    proc = subprocess.Popen(
        [str(TRAINGUARD), "replay", "--policy", str(POLICY), str(TRACES / "known-miner.jsonl"), "--output", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_several_traces_are_merged_in_time() -> None:
    r = replay("--policy", POLICY, TRACES / "ddp-nccl.jsonl", TRACES / "hidden-listener.jsonl", "--output", "json")
    assert r.returncode == 3
    times = [json.loads(line)["time"] for line in r.stdout.splitlines()]
    assert times == sorted(times)


def test_malformed_lines_are_reported_skipped_and_exit_2(tmp_path: Path) -> None:
    good = (TRACES / "ddp-nccl.jsonl").read_text().splitlines()
    trace = tmp_path / "broken.jsonl"
    trace.write_text("\n".join([good[0], "{not json", good[1], '{"ts": 1, "pod": "p"}', "", *good[2:]]) + "\n")
    r = replay("--policy", POLICY, trace)
    assert r.returncode == 2, r.stdout
    assert f"{trace}:2:" in r.stderr and f"{trace}:4:" in r.stderr and "seq" in r.stderr
    assert f"{len(good)} samples from 3 pods; 2 malformed lines skipped" in r.stdout


def test_violations_win_over_malformed_lines(tmp_path: Path) -> None:
    trace = tmp_path / "attack.jsonl"
    trace.write_text((TRACES / "known-miner.jsonl").read_text() + "garbage\n")
    r = replay("--policy", POLICY, trace)
    assert r.returncode == 3
    assert f"{trace}:" in r.stderr


def test_an_invalid_policy_exits_2_naming_file_line_and_camel_case_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(POLICY.read_text().replace("maxPowerWatts: 700", "maxPowerWatts: -700"))
    r = replay("--policy", bad, TRACES / "ddp-nccl.jsonl")
    assert r.returncode == 2
    line = next(i for i, text in enumerate(bad.read_text().splitlines(), start=1) if "maxPowerWatts" in text)
    assert f"{bad}:{line}: spec.policy.gpu.maxPowerWatts:" in r.stderr


def test_unknown_field_in_policy(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(POLICY.read_text().replace("forbidTunnels: true", "forbidTunnels: true\n      forbidMining: true"))
    r = replay("--policy", bad, TRACES / "ddp-nccl.jsonl")
    assert r.returncode == 2
    assert "spec.policy.network.forbidMining" in r.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [("spec: [unclosed", "not valid YAML"), ("- a list", "expected an AgentTrainingJob")],
)
def test_policy_that_is_not_an_object(tmp_path: Path, content: str, message: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    r = replay("--policy", bad, TRACES / "ddp-nccl.jsonl")
    assert r.returncode == 2
    assert str(bad) in r.stderr and message in r.stderr


def test_missing_files_exit_2(tmp_path: Path) -> None:
    r = replay("--policy", tmp_path / "none.yaml", TRACES / "ddp-nccl.jsonl")
    assert r.returncode == 2 and "none.yaml" in r.stderr
    r = replay("--policy", POLICY, tmp_path / "none.jsonl")
    assert r.returncode == 2 and "none.jsonl" in r.stderr


def test_context_flags(tmp_path: Path) -> None:
    trace = tmp_path / "dns.jsonl"
    dns = {"proto": "udp", "local": "10.244.1.10:33000", "remote": "10.96.0.10:53", "state": "ESTABLISHED"}
    trace.write_text(
        "".join(
            json.dumps({"ts": 1767225600 + i, "pod": "agents/p", "seq": i, "connections": [dns]}) + "\n"
            for i in range(5)
        )
    )
    # No resolver named: port 53 is egress like any other (fails closed), and the replay says so.
    r = replay("--policy", POLICY, trace, cluster=False)
    assert r.returncode == 3 and "10.96.0.10:53" in r.stdout
    assert "assumed: DNS resolvers: none given" in r.stderr
    r = replay("--policy", POLICY, trace, "--dns-resolver", "10.96.0.99", cluster=False)
    assert r.returncode == 3
    assert replay("--policy", POLICY, trace, "--dns-resolver", "10.96.0.10", cluster=False).returncode == 0
    r = replay("--policy", POLICY, TRACES / "ddp-nccl.jsonl", "--pod-ip", "not-an-ip")
    assert r.returncode == 2 and "not-an-ip" in r.stderr
    r = replay("--policy", POLICY, trace, "--selector-peer", "0=10.0.0.1")
    assert r.returncode == 2 and "not a selector rule" in r.stderr


def test_an_empty_trace_exits_2(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    r = replay("--policy", POLICY, empty)
    assert r.returncode == 2 and "no sample" in r.stderr


def test_a_sensor_killed_before_the_end_is_silent_there(tmp_path: Path) -> None:
    lines = (TRACES / "steady-pretrain.jsonl").read_text().splitlines()
    cut = tmp_path / "cut.jsonl"
    # Worker 1's sensor dies at t=30 while worker 0's goes on: silent during the trace.
    cut.write_text(
        "".join(
            line + "\n"
            for line in lines
            if not ('"agents/rl-trainer-worker-1"' in line and json.loads(line)["ts"] >= 1767225630)
        )
    )
    r = replay("--policy", POLICY, cut, "--output", "json")
    silent = [json.loads(x) for x in r.stdout.splitlines() if '"sensor.silent"' in x]
    assert r.returncode == 3 and silent and silent[0]["pod"] == "agents/rl-trainer-worker-1"
    # A single pod killed at the end: silent only when the clock runs on past the last sample.
    solo = tmp_path / "solo.jsonl"
    solo.write_text("".join(line + "\n" for line in lines[:40] if '"agents/rl-trainer-worker-0"' in line))
    assert replay("--policy", POLICY, solo).returncode == 0
    r = replay("--policy", POLICY, solo, "--run-on", "15")
    assert r.returncode == 3 and "sensor.silent" in r.stdout


def test_an_engine_error_is_not_reported_as_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fault inside the engine surfaces as itself (a traceback, exit 1), never as exit 2 'bad input'."""
    def broken(*_: object, **__: object) -> list[object]:
        raise ValueError("an engine bug")

    monkeypatch.setattr(command, "replay", broken)
    with pytest.raises(ValueError, match="an engine bug"):
        cli.main(["replay", "--policy", str(POLICY), str(TRACES / "ddp-nccl.jsonl")])
