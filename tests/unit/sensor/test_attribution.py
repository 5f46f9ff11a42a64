from __future__ import annotations

from trainguard.api.sample import GpuProcess, GpuSample, ProcessInfo
from trainguard.sensor.attribution import GpuAttributor
from trainguard.sensor.errors import SensorErrorKind
from trainguard.sensor.processes import ProcessRecord


def proc(pid: int, cmdline: str, start: int = 100) -> ProcessRecord:
    argv = cmdline.split()
    info = ProcessInfo(pid=pid, name=argv[0], argv=argv, exe=f"/usr/bin/{argv[0]}", uid=1000)
    return ProcessRecord(info, start)


def gpu(*host_pids: int) -> GpuSample:
    return GpuSample(index=0, uuid="GPU-0", processes=[GpuProcess(pid=p, used_memory_bytes=1) for p in host_pids])


MINORS = {0: 0}


def names(gpus: list[GpuSample]) -> dict[int, str]:
    return {p.pid: " ".join(p.argv) for g in gpus for p in g.processes}


def test_one_holder_one_gpu_process_is_certain() -> None:
    out, errors = GpuAttributor().attribute(
        [gpu(90001)], MINORS, {"/dev/nvidia0": {7}}, [proc(7, "python train.py"), proc(12, "xmrig")]
    )
    assert names(out) == {90001: "python train.py"} and errors == []


def test_holders_of_another_gpu_do_not_count() -> None:
    out, errors = GpuAttributor().attribute([gpu(90001)], MINORS, {"/dev/nvidia1": {7}}, [proc(7, "python a")])
    assert names(out) == {90001: ""}
    assert [e.kind for e in errors] == [SensorErrorKind.ATTRIBUTION]


def test_several_holders_running_one_command_give_the_command() -> None:
    procs = [proc(7, "python train.py"), proc(8, "python train.py")]
    out, errors = GpuAttributor().attribute([gpu(90001, 90002)], MINORS, {"/dev/nvidia0": {7, 8}}, procs)
    assert names(out) == {90001: "python train.py", 90002: "python train.py"} and errors == []


def test_several_different_holders_stay_unattributed() -> None:
    procs = [proc(7, "python train.py"), proc(12, "./xmrig")]
    out, errors = GpuAttributor().attribute([gpu(90001, 90002)], MINORS, {"/dev/nvidia0": {7, 12}}, procs)
    assert names(out) == {90001: "", 90002: ""}
    assert "2 GPU processes" in errors[0].message


def test_more_gpu_processes_than_holders_are_not_all_ours() -> None:
    out, _ = GpuAttributor().attribute([gpu(90001, 90002)], MINORS, {"/dev/nvidia0": {7}}, [proc(7, "python train.py")])
    assert names(out) == {90001: "", 90002: ""}


def test_a_pair_once_certain_is_kept_and_the_newcomer_follows_by_elimination() -> None:
    attributor = GpuAttributor()
    train = proc(7, "python train.py")
    attributor.attribute([gpu(90001)], MINORS, {"/dev/nvidia0": {7}}, [train])
    miner = proc(12, "./xmrig -o pool:3333")
    out, errors = attributor.attribute([gpu(90001, 90002)], MINORS, {"/dev/nvidia0": {7, 12}}, [train, miner])
    assert names(out) == {90001: "python train.py", 90002: "./xmrig -o pool:3333"} and errors == []


def test_a_pair_is_forgotten_when_the_pod_pid_is_reused() -> None:
    attributor = GpuAttributor()
    attributor.attribute([gpu(90001)], MINORS, {"/dev/nvidia0": {7}}, [proc(7, "python train.py")])
    reborn = proc(7, "./xmrig", start=999)  # same pid, another process
    other = proc(8, "python eval.py")
    out, _ = attributor.attribute([gpu(90001, 90002)], MINORS, {"/dev/nvidia0": {7, 8}}, [reborn, other])
    assert names(out) == {90001: "", 90002: ""}


def test_replayed_names_are_kept_when_nothing_can_be_attributed() -> None:
    replayed = GpuSample(index=0, processes=[GpuProcess(pid=5, name="python", argv=["python", "x.py"])])
    out, errors = GpuAttributor().attribute([replayed], {}, {}, [])
    assert out == [replayed] and errors == []


def test_attribution_carries_the_executable_of_the_pod_process() -> None:
    out, _ = GpuAttributor().attribute([gpu(90001)], MINORS, {"/dev/nvidia0": {7}}, [proc(7, "python train.py")])
    assert out[0].processes[0].exe == "/usr/bin/python"
