from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from trainguard.sensor import command
from trainguard.sensor.gpu import NoGpuSource, NvmlGpuSource, TraceError


def test_pod_identity() -> None:
    env = {"POD_NAMESPACE": "team-a", "POD_NAME": "job-0"}
    assert command.pod_identity("ns/x", env, "host") == "ns/x"
    assert command.pod_identity("x", env, "host") == "team-a/x"
    assert command.pod_identity(None, env, "host") == "team-a/job-0"
    assert command.pod_identity(None, {}, "host") == "default/host"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(argv)


def test_flags_and_defaults() -> None:
    args = parse()
    assert (args.port, args.address, args.interval, args.gpu_source) == (9400, "0.0.0.0", 1.0, "nvml")
    assert (args.proc_root, args.max_processes, args.max_connections) == ("/proc", 4096, 4096)
    with pytest.raises(SystemExit):
        parse("--interval", "0")


def test_gpu_sources() -> None:
    assert isinstance(command.make_gpu_source(parse("--gpu-source", "none")), NoGpuSource)
    assert isinstance(command.make_gpu_source(parse()), NvmlGpuSource)
    with pytest.raises(TraceError, match="--gpu-trace"):
        command.make_gpu_source(parse("--gpu-source", "replay"))


def test_replay_without_a_trace_exits_2() -> None:
    assert command.run(parse("--gpu-source", "replay", "--record", "/nonexistent/x")) == 2


def test_socket_reader_and_container_names() -> None:
    assert (parse().socket_reader, parse().container_name) == ("netlink", [])
    assert parse("--socket-reader", "proc").socket_reader == "proc"
    ident = "ab" * 32
    args = parse("--container-name", f"trainer=containerd://{ident}", "--container-name", f"sidecar={'cd' * 32}")
    assert args.container_name == [("trainer", ident), ("sidecar", "cd" * 32)]
    for bad in ("trainer", f"={ident}", "trainer=abc", f"trainer={'AB' * 32}"):
        with pytest.raises(SystemExit):
            parse("--container-name", bad)
    with pytest.raises(SystemExit):
        parse("--socket-reader", "pyroute2")


def test_the_key_file_is_read_exactly_and_a_bad_explicit_one_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "sensor.key"
    path.write_bytes(b" \x00random key bytes\n")
    assert command.read_key(path) == b" \x00random key bytes\n"  # exactly the Secret's bytes
    with pytest.raises(command.KeyFileError, match="no such file"):
        command.read_key(tmp_path / "missing")
    path.write_bytes(b"short")
    with pytest.raises(command.KeyFileError, match="at least 16 bytes"):
        command.read_key(path)
