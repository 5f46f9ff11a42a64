"""The GPU rules: who uses the pod's GPUs, within which bounds, and whether they are busy like a miner."""

from __future__ import annotations

from collections.abc import Sequence

from trainguard.detection.rules.base import NOTHING, Rule, RuleInput
from trainguard.detection.violation import EvidenceValue, Finding

GPU_PROCESS_UNEXPECTED = "gpu.process.unexpected"
GPU_UTILIZATION = "gpu.utilization"
GPU_MEMORY = "gpu.memory"
GPU_POWER = "gpu.power"
GPU_MINING_SIGNATURE = "gpu.mining-signature"
GPU_PROCESSES_EXCEEDED = "gpu.processes.exceeded"


def gpu_process_unexpected(inp: RuleInput) -> Sequence[Finding]:
    """With gpu.allowedProcesses: a process on a GPU whose executable matches none of the patterns. A
    GPU process the sensor could not attribute (no name, no executable) matches nothing: something
    outside the pod's view is using its GPU."""
    policy = inp.policy
    if policy.gpu_allowed is None:
        return NOTHING
    found: list[Finding] = []
    for g in inp.sample.gpus:
        for gp in g.processes:
            if policy.gpu_process(gp)[1]:
                evidence: dict[str, EvidenceValue] = {
                    "gpu": g.index,
                    "pid": gp.pid,
                    "process": gp.name,
                    "exe": gp.exe or f"({gp.exe_status})",
                    "usedMemoryBytes": gp.used_memory_bytes,
                }
                found.append(Finding(GPU_PROCESS_UNEXPECTED, gp.name or gp.exe or "(unattributed)", evidence))
    return found or NOTHING


def gpu_utilization(inp: RuleInput) -> Sequence[Finding]:
    """SM utilization above gpu.maxUtilization (the debounce makes it 'sustained'); an unknown reading is no finding."""
    bound = inp.policy.policy.gpu.max_utilization
    if bound is None:
        return NOTHING
    found = [
        Finding(GPU_UTILIZATION, f"gpu{g.index}", {"gpu": g.index, "utilization": g.utilization, "bound": bound})
        for g in inp.sample.gpus
        if g.utilization is not None and g.utilization > bound
    ]
    return found or NOTHING


def gpu_memory(inp: RuleInput) -> Sequence[Finding]:
    """Framebuffer use above gpu.maxMemoryBytes on a GPU."""
    bound = inp.policy.policy.gpu.max_memory_bytes
    if bound is None:
        return NOTHING
    found = [
        Finding(GPU_MEMORY, f"gpu{g.index}", {"gpu": g.index, "memoryUsedBytes": g.memory_used_bytes, "bound": bound})
        for g in inp.sample.gpus
        if g.memory_used_bytes is not None and g.memory_used_bytes > bound
    ]
    return found or NOTHING


def gpu_power(inp: RuleInput) -> Sequence[Finding]:
    """Power draw above gpu.maxPowerWatts on a GPU."""
    bound = inp.policy.policy.gpu.max_power_watts
    if bound is None:
        return NOTHING
    found = [
        Finding(GPU_POWER, f"gpu{g.index}", {"gpu": g.index, "powerWatts": g.power_watts, "bound": bound})
        for g in inp.sample.gpus
        if g.power_watts is not None and g.power_watts > bound
    ]
    return found or NOTHING


def gpu_processes_exceeded(inp: RuleInput) -> Sequence[Finding]:
    """With gpu.maxProcessesPerGpu: more compute processes on one GPU than the bound. A data-parallel
    trainer runs one process per GPU; a second one is someone else's work on the same GPU (a miner
    sharing the trainer's GPU), whatever it is called. Identity `gpuN`."""
    bound = inp.policy.policy.gpu.max_processes_per_gpu
    if bound is None:
        return NOTHING
    found = [
        Finding(
            GPU_PROCESSES_EXCEEDED,
            f"gpu{g.index}",
            {
                "gpu": g.index,
                "uuid": g.uuid,
                "processes": len(g.processes),
                "bound": bound,
                "gpuProcesses": [f"{p.name or '(unattributed)'} (pid {p.pid})" for p in g.processes],
            },
        )
        for g in inp.sample.gpus
        if len(g.processes) > bound
    ]
    return found or NOTHING


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def gpu_mining_signature(inp: RuleInput) -> Sequence[Finding]:
    """A GPU busy the way a miner is and training is not, whatever the miner's binary is called.

    Judged per GPU over a full window (default 60 consecutive samples). When every sample of the
    window has the GPU's profile, the profile decides: active on average at least `min_duty` (duty
    cycles tolerated), and over the active samples the tensor pipes idle, every floating-point pipe
    idle, and the integer pipes or the memory interface busy: hashing, not learning or simulating.
    Otherwise today's evidence: every sample busy, the mean near 100%, utilization flat (training
    pauses for data, collectives, optimizer steps, logging; a hash loop never does) and power flat
    (skipped when a sample had no power reading), corroborated by low framebuffer use or idle tensor
    pipes (the pod's DCGM metric).
    """
    if not inp.policy.policy.gpu.mining_signature:
        return NOTHING
    t = inp.policy.context.mining
    found: list[Finding] = []
    for st in inp.full_gpus:
        evidence: dict[str, EvidenceValue]
        mix = st.profile
        if mix is not None:
            fp = max(mix.fp16, mix.fp32, mix.fp64)
            hashing = max(mix.int, mix.dram)
            if (
                mix.duty < t.min_duty
                or mix.tensor >= t.max_tensor_active
                or fp >= t.max_float_active
                or hashing < t.min_hash_active
            ):
                continue
            evidence = {
                "basis": "profile",
                "duty": round(mix.duty, 4),
                "activeSamples": mix.active_samples,
                "tensorActive": round(mix.tensor, 4),
                "intActive": round(mix.int, 4),
                "dramActive": round(mix.dram, 4),
                "fp16Active": round(mix.fp16, 4),
                "fp32Active": round(mix.fp32, 4),
                "fp64Active": round(mix.fp64, 4),
            }
        else:
            if not st.saturated:
                continue
            if st.utilization_mean < t.min_mean_utilization or st.utilization_stddev > t.max_utilization_stddev:
                continue
            if st.power_cv is not None and st.power_cv > t.max_power_cv:
                continue
            low_memory = st.memory_fraction is not None and st.memory_fraction < t.max_memory_fraction
            idle_tensor = st.tensor_active is not None and st.tensor_active < t.max_tensor_active
            if not (low_memory or idle_tensor):
                continue
            evidence = {
                "basis": "utilization",
                "utilizationMean": round(st.utilization_mean, 4),
                "utilizationStddev": round(st.utilization_stddev, 4),
                "powerMeanWatts": round(st.power_mean, 1) if st.power_mean is not None else None,
                "powerCv": _r(st.power_cv),
                "memoryFraction": _r(st.memory_fraction),
                "tensorActive": _r(st.tensor_active),
                "corroboratedBy": [w for w, on in (("lowMemory", low_memory), ("idleTensorPipe", idle_tensor)) if on],
            }
        gpu = next((g for g in inp.sample.gpus if g.index == st.index), None)
        found.append(
            Finding(
                GPU_MINING_SIGNATURE,
                f"gpu{st.index}",
                {
                    "gpu": st.index,
                    "uuid": gpu.uuid if gpu else "",
                    "windowSamples": st.samples,
                    **evidence,
                    "gpuProcesses": [p.name or f"pid {p.pid}" for p in gpu.processes] if gpu else [],
                },
            )
        )
    return found or NOTHING


RULES: tuple[Rule, ...] = (
    Rule(GPU_PROCESS_UNEXPECTED, "High", False, gpu_process_unexpected, "process on a GPU not allowed"),
    Rule(GPU_UTILIZATION, "Medium", False, gpu_utilization, "GPU utilization above bound"),
    Rule(GPU_MEMORY, "Medium", False, gpu_memory, "GPU memory above bound"),
    Rule(GPU_POWER, "Medium", False, gpu_power, "GPU power above bound"),
    Rule(GPU_PROCESSES_EXCEEDED, "Medium", False, gpu_processes_exceeded, "more processes on a GPU than allowed"),
    Rule(GPU_MINING_SIGNATURE, "High", True, gpu_mining_signature, "GPU busy like a miner"),
)
