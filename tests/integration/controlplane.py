"""Build and run the local Kubernetes control plane of controlplane/ (see docs/controlplane.md)."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "controlplane"


class ControlPlaneError(Exception):
    """The control plane could not be built, started or stopped."""


def build() -> None:
    """Build the control plane and kubectl into the cache (instant when cached); output goes to the terminal."""
    result = subprocess.run([str(SCRIPT), "build"], stdout=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        raise ControlPlaneError(f"scripts/controlplane build failed with exit status {result.returncode}")


def binary() -> Path:
    out = subprocess.run([str(SCRIPT), "path"], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise ControlPlaneError(f"scripts/controlplane path: {out.stderr.strip()}")
    return Path(out.stdout.strip())


def tool_bin() -> Path:
    """The cache's bin directory (kubectl, helm), as `scripts/controlplane env` puts it on PATH."""
    cache = Path(os.environ.get("TRAINGUARD_CACHE", Path.home() / ".cache" / "trainguard"))
    return cache / "bin"


@dataclass
class ControlPlane:
    """One running `controlplane run` process with its data directory."""

    data_dir: Path
    process: subprocess.Popen[str]
    kubeconfig: Path
    server: str
    ready_seconds: float
    stderr_path: Path
    lines: list[str] = field(default_factory=list)

    @classmethod
    def start(
        cls, binary: Path, data_dir: Path, timeout: float = 120.0, extra_args: tuple[str, ...] = ()
    ) -> ControlPlane:
        """Start the control plane and wait until it prints "ready"; raise ControlPlaneError if it exits first."""
        data_dir.mkdir(parents=True, exist_ok=True)
        stderr_path = data_dir.parent / f"{data_dir.name}.stderr.log"
        started = time.monotonic()
        with stderr_path.open("w") as stderr:
            process = subprocess.Popen(
                [str(binary), "run", "--data-dir", str(data_dir), *extra_args],
                stdout=subprocess.PIPE,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                text=True,
            )
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        threading.Thread(target=pump, name="controlplane-stdout", daemon=True).start()
        seen: list[str] = []
        deadline = started + timeout
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                process.send_signal(signal.SIGTERM)
                process.wait(30)
                raise ControlPlaneError(
                    f"control plane not ready within {timeout:g} s; stderr:\n{stderr_path.read_text()}"
                ) from None
            if line is None:
                code = process.wait()
                raise ControlPlaneError(
                    f"control plane exited with status {code} before it was ready; stderr:\n{stderr_path.read_text()}"
                )
            seen.append(line)
            if line == "ready":
                break
        values = dict(x.split(": ", 1) for x in seen if ": " in x)
        return cls(
            data_dir=data_dir,
            process=process,
            kubeconfig=Path(values["kubeconfig"]),
            server=values["apiserver"],
            ready_seconds=time.monotonic() - started,
            stderr_path=stderr_path,
            lines=seen,
        )

    def children(self) -> list[int]:
        """PIDs of the component processes (apiserver, controller-manager) this control plane started."""
        pids: list[int] = []
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            pids += [int(p) for p in (task / "children").read_text().split()]
        return pids

    def stop(self, timeout: float = 40.0) -> int:
        """SIGTERM, then wait; returns the exit status. Kills it (and fails) if it does not stop in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise ControlPlaneError(f"control plane did not stop within {timeout:g} s of SIGTERM") from None
