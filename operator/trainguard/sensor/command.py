"""`trainguard sensor`: the per-pod sidecar. Thin: parse flags, wire the parts, run the loop."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import logging
import os
import resource
import signal
import socket
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import IO

from trainguard.api import sensorproto
from trainguard.api.sample import Sample
from trainguard.api.sensorproto import SECRET_KEY_NAME, SECRET_MOUNT_PATH
from trainguard.sensor.cut import Cutter
from trainguard.sensor.errors import SensorError
from trainguard.sensor.gpu import GpuSource, NoGpuSource, NvmlGpuSource, ReplayGpuSource, TraceEnd, TraceError
from trainguard.sensor.metrics import SensorMetrics
from trainguard.sensor.sampler import Sampler, SamplerSettings, run_loop
from trainguard.sensor.server import SensorServer
from trainguard.sensor.stream import SampleEncoder, SampleHub

log = logging.getLogger("trainguard.sensor")

_PR_SET_DUMPABLE = 4


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _container_name(text: str) -> tuple[str, str]:
    name, sep, container_id = text.partition("=")
    container_id = container_id.removeprefix("containerd://").removeprefix("cri-o://").removeprefix("docker://")
    if not sep or not name or len(container_id) != 64 or any(c not in "0123456789abcdef" for c in container_id):
        raise argparse.ArgumentTypeError(f"want NAME=<64 hex digit container id>, got {text!r}")
    return name, container_id


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pod", help="namespace/name (default: $POD_NAMESPACE/$POD_NAME, else default/<hostname>)")
    parser.add_argument("--address", default="0.0.0.0", help="address to serve on (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=9400, help="port to serve on (default 9400)")
    parser.add_argument("--interval", type=_positive_float, default=1.0, help="seconds between samples (default 1)")
    parser.add_argument(
        "--gpu-source",
        choices=("nvml", "replay", "none"),
        default="nvml",
        help="where GPU state comes from (default nvml; without a driver: gpus [] and an error entry)",
    )
    parser.add_argument("--gpu-trace", type=Path, help="JSON Lines trace replayed by --gpu-source replay")
    parser.add_argument(
        "--gpu-trace-end",
        choices=[e.value for e in TraceEnd],
        default=TraceEnd.LOOP.value,
        help="after the trace's last sample: loop (default) or hold it",
    )
    parser.add_argument("--proc-root", default="/proc", help="where /proc is (default /proc)")
    parser.add_argument("--max-processes", type=_positive_int, default=4096, help="processes per sample (4096)")
    parser.add_argument(
        "--max-connections",
        type=_positive_int,
        default=4096,
        help="listening sockets, and connections, per sample (4096 each)",
    )
    parser.add_argument(
        "--socket-reader",
        choices=("netlink", "proc"),
        default="netlink",
        help="netlink sock_diag (default; /proc/net where refused, with a net_fallback error) or /proc/net only",
    )
    parser.add_argument(
        "--container-name",
        type=_container_name,
        action="append",
        default=[],
        metavar="NAME=ID",
        help="name the container with this id (from its cgroup) in the samples; repeatable. The sensor cannot "
        "ask the API server: without it, processes carry only the container id",
    )
    parser.add_argument(
        "--key-file",
        type=Path,
        help="the job's sensor key (default: "
        f"{SECRET_MOUNT_PATH}/{SECRET_KEY_NAME} if it exists). With a key the sensor serves the authenticated "
        "/v2 protocol only (signed samples, cut commands); without one, the unauthenticated /v1 endpoints. Given "
        "explicitly, a missing or empty file is an error",
    )
    parser.add_argument("--record", type=Path, help="write samples to this JSON Lines file instead of serving")
    parser.add_argument(
        "--duration", type=_positive_float, help="stop after this many seconds (exit 0); default: run until SIGTERM"
    )
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


def pod_identity(flag: str | None, env: Mapping[str, str], hostname: str) -> str:
    """namespace/name: --pod, else the downward API's POD_NAMESPACE/POD_NAME, else default/<hostname>."""
    if flag:
        return flag if "/" in flag else f"{env.get('POD_NAMESPACE') or 'default'}/{flag}"
    return f"{env.get('POD_NAMESPACE') or 'default'}/{env.get('POD_NAME') or hostname}"


def make_gpu_source(args: argparse.Namespace) -> GpuSource:
    """The GPU source the flags ask for; TraceError for an unusable trace."""
    if args.gpu_source == "none":
        return NoGpuSource()
    if args.gpu_source == "replay":
        if args.gpu_trace is None:
            raise TraceError("--gpu-source replay needs --gpu-trace PATH")
        return ReplayGpuSource.from_file(args.gpu_trace, TraceEnd(args.gpu_trace_end))
    try:
        import pynvml  # noqa: PLC0415 (only the nvml source needs it)
    except ImportError as exc:  # the image always has it; a bare install might not
        log.warning("pynvml is not installed (%s): no GPU is reported", exc)
        return NoGpuSource()
    return NvmlGpuSource(pynvml)


def make_non_dumpable() -> bool:
    """prctl(PR_SET_DUMPABLE, 0): processes of the same uid can no longer ptrace this one or read its memory.

    It matters when the sensor runs as the workload's uid (see docs/sensor.md). Best effort.
    """
    libc_name = ctypes.util.find_library("c")
    if not libc_name or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        return int(libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def raise_open_files_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard one: the /proc watcher keeps 2 files open per process."""
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class KeyFileError(ValueError):
    """The key file is unusable."""


def read_key(path: Path | None) -> bytes | None:
    """The sensor key: from `path` (required to exist and be non-empty), else from the Secret's mount point if
    it is there, else None (local use). The key is the file's bytes exactly, as the operator reads them from the
    Secret (nothing stripped: a random key may end in a byte that looks like whitespace)."""
    explicit = path is not None
    target = path if path is not None else Path(SECRET_MOUNT_PATH) / SECRET_KEY_NAME
    try:
        key = target.read_bytes()
    except FileNotFoundError:
        if explicit:
            raise KeyFileError(f"--key-file {target}: no such file") from None
        return None
    except OSError as exc:
        raise KeyFileError(f"key file {target}: {exc.strerror or exc}") from exc
    if len(key) < 16:
        raise KeyFileError(f"key file {target}: {len(key)} bytes; a sensor key is at least 16 bytes")
    return key


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        key = read_key(args.key_file)
    except KeyFileError as exc:
        log.error("%s", exc)
        return 2
    try:
        gpu_source = make_gpu_source(args)
    except TraceError as exc:
        log.error("%s", exc)
        return 2
    settings = SamplerSettings(
        pod=pod_identity(args.pod, os.environ, socket.gethostname()),
        interval_s=args.interval,
        proc_root=args.proc_root,
        max_processes=args.max_processes,
        max_connections=args.max_connections,
        socket_reader=args.socket_reader,
        container_names={container_id: name for name, container_id in args.container_name},
    )
    raise_open_files_limit()
    if not make_non_dumpable():
        log.warning("could not make the sensor non-dumpable")
    sampler = Sampler(settings, gpu_source)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        if args.record is not None:
            return _record(sampler, args.record, stop, args.duration)
        return _serve(sampler, args, stop, key)
    finally:
        sampler.close()


def _record(sampler: Sampler, path: Path, stop: threading.Event, duration_s: float | None) -> int:
    try:
        trace: IO[bytes] = path.open("wb")
    except OSError as exc:
        log.error("cannot write %s: %s", path, exc.strerror or exc)
        return 1
    encoder = SampleEncoder()
    with trace:

        def write(sample: Sample, errors: list[SensorError], seconds: float) -> None:
            trace.write(encoder.encode(sample) + b"\n")
            trace.flush()

        count = run_loop(sampler, write, stop, duration_s=duration_s)
    log.info("recorded %d samples to %s", count, path)
    return 0


def _serve(sampler: Sampler, args: argparse.Namespace, stop: threading.Event, key: bytes | None) -> int:
    pod = sampler.settings.pod
    hub = SampleHub(sign=None if key is None else lambda data: sensorproto.sign_sample(key, data))
    metrics = SensorMetrics(lambda: hub.latest, lambda: hub.subscriber_count)
    try:
        server = SensorServer(
            (args.address, args.port),
            hub,
            metrics,
            healthy_within_s=max(3 * args.interval, 5.0),
            key=key,
            pod=pod,
            cutter=None if key is None else Cutter(pod, proc_root=args.proc_root),
        )
    except OSError as exc:
        log.error("cannot serve on %s:%d: %s", args.address, args.port, exc.strerror or exc)
        return 1
    serving = threading.Thread(target=server.serve_forever, name="sensor-http", daemon=True)
    serving.start()
    log.info(
        "sensor for %s on %s:%d every %gs, %s",
        pod, args.address, server.server_port, args.interval,
        "authenticated (/v2)" if key is not None else "no key: unauthenticated /v1, /v2 off",
    )  # fmt: skip

    def emit(sample: Sample, errors: list[SensorError], seconds: float) -> None:
        hub.publish(sample)
        metrics.observe(errors, seconds)

    try:
        run_loop(sampler, emit, stop, duration_s=args.duration)
    finally:
        with contextlib.suppress(OSError):
            server.stop()
    return 0
