"""The pod's plumbing, named by the sensor where it can tell it (the engine exempts plumbing by container)."""

from __future__ import annotations

import shutil
from pathlib import Path

from trainguard.api.sample import SANDBOX_CONTAINER, SENSOR_CONTAINER, GpuProcess, GpuSample, ProcessInfo
from trainguard.sensor import processes
from trainguard.sensor.attribution import GpuAttributor
from trainguard.sensor.processes import ProcessRecord

SANDBOX_ID = "a" * 64
SENSOR_ID = "b" * 64
WORKLOAD_ID = "c" * 64


def _tree(handmade: str, tmp_path: Path) -> Path:
    root = tmp_path / "proc"
    shutil.copytree(handmade, root, symlinks=True)
    for pid, ident in ((1, SANDBOX_ID), (7, WORKLOAD_ID), (9, SENSOR_ID), (12, WORKLOAD_ID)):
        (root / str(pid) / "cgroup").write_text(f"0::/kubepods/pod1/{ident}\n")
    return root


def _containers(watcher: processes.ProcessWatcher) -> dict[int, str]:
    return {r.pid: r.info.container for r in watcher.scan().processes}


def test_pid_1_is_the_sandbox_and_the_sensors_container_is_the_sensors(handmade: str, tmp_path: Path) -> None:
    root = _tree(handmade, tmp_path)
    names = _containers(processes.ProcessWatcher(str(root), sensor_pid=9))
    assert names[1] == SANDBOX_CONTAINER and names[9] == SENSOR_CONTAINER
    assert names[7] == names[12] == ""  # the workload's, whatever it calls itself
    # Told names come first; the sensor's own pid is its own even without a container id.
    told = _containers(processes.ProcessWatcher(str(root), sensor_pid=15, container_names={WORKLOAD_ID: "trainer"}))
    assert told[7] == "trainer" and told[15] == SENSOR_CONTAINER and told[9] == ""


def test_a_process_named_pause_that_is_not_pid_1_is_not_the_sandbox(handmade: str, tmp_path: Path) -> None:
    root = _tree(handmade, tmp_path)
    stat = (root / "7" / "stat").read_text()
    (root / "7" / "stat").write_text(stat.replace(stat[stat.index("(") : stat.index(")") + 1], "(pause)", 1))
    names = _containers(processes.ProcessWatcher(str(root), sensor_pid=9))
    assert names[7] == ""


def test_pid_1_in_the_sensors_own_container_is_the_sensors(handmade: str, tmp_path: Path) -> None:
    """No shared pid namespace: pid 1 is the sensor's container's, and there is no sandbox to see."""
    root = _tree(handmade, tmp_path)
    (root / "1" / "cgroup").write_text(f"0::/kubepods/pod1/{SENSOR_ID}\n")
    assert _containers(processes.ProcessWatcher(str(root), sensor_pid=9))[1] == SENSOR_CONTAINER


def test_gpu_processes_carry_the_exe_status_of_the_process_they_are() -> None:
    info = ProcessInfo(pid=7, name="python", argv=["python", "x.py"], exe="/tmp/python", exe_status="deleted")
    gpu = GpuSample(index=0, uuid="GPU-0", processes=[GpuProcess(pid=90001), GpuProcess(pid=90002)])
    two = [ProcessRecord(info, 100), ProcessRecord(info.model_copy(update={"pid": 8, "argv": ["other"]}), 100)]
    out, _ = GpuAttributor().attribute([gpu], {0: 0}, {"/dev/nvidia0": {7}}, two[:1])
    assert [(p.exe, p.exe_status) for p in out[0].processes if p.name] == []  # two GPU processes, one holder
    out, _ = GpuAttributor().attribute([gpu.model_copy(update={"processes": gpu.processes[:1]})], {0: 0},
                                       {"/dev/nvidia0": {7}}, two[:1])  # fmt: skip
    assert [(p.exe, p.exe_status) for p in out[0].processes] == [("/tmp/python", "deleted")]
    out, _ = GpuAttributor().attribute([gpu], {0: 0}, {"/dev/nvidia0": {7, 8}}, two)
    assert [p.exe_status for p in out[0].processes] == ["unreadable", "unreadable"]  # not tied: not known
