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


def gpu_mining_signature(inp: RuleInput) -> Sequence[Finding]:
    """A GPU busy the way a miner is and training is not, whatever the miner's binary is called.

    Required, over a full window (default 60 samples) of busy samples: the mean near 100%,
    utilization flat (training pauses for data, collectives, optimizer steps, logging; a hash loop
    never does) and power flat (skipped when a sample had no power reading). Corroborated by either:
    framebuffer use low (training fills memory; a hash loop needs a few GB), or tensor-pipe activity
    near zero (hashing is integer and memory work; training is matrix multiplies).
    """
    if not inp.policy.policy.gpu.mining_signature:
        return NOTHING
    t = inp.policy.context.mining
    found: list[Finding] = []
    for st in inp.full_gpus:
        if st.utilization_mean < t.min_mean_utilization or st.utilization_stddev > t.max_utilization_stddev:
            continue
        if st.power_cv is not None and st.power_cv > t.max_power_cv:
            continue
        low_memory = st.memory_fraction is not None and st.memory_fraction < t.max_memory_fraction
        idle_tensor = st.tensor_active is not None and st.tensor_active < t.max_tensor_active
        if not (low_memory or idle_tensor):
            continue
        gpu = next((g for g in inp.sample.gpus if g.index == st.index), None)
        evidence: dict[str, EvidenceValue] = {
            "gpu": st.index,
            "uuid": gpu.uuid if gpu else "",
            "windowSamples": st.samples,
            "utilizationMean": round(st.utilization_mean, 4),
            "utilizationStddev": round(st.utilization_stddev, 4),
            "powerMeanWatts": round(st.power_mean, 1) if st.power_mean is not None else None,
            "powerCv": round(st.power_cv, 4) if st.power_cv is not None else None,
            "memoryFraction": round(st.memory_fraction, 4) if st.memory_fraction is not None else None,
            "tensorActive": round(st.tensor_active, 4) if st.tensor_active is not None else None,
            "corroboratedBy": [w for w, on in (("lowMemory", low_memory), ("idleTensorPipe", idle_tensor)) if on],
            "gpuProcesses": [p.name or f"pid {p.pid}" for p in gpu.processes] if gpu else [],
        }
        found.append(Finding(GPU_MINING_SIGNATURE, f"gpu{st.index}", evidence))
    return found or NOTHING


RULES: tuple[Rule, ...] = (
    Rule(GPU_PROCESS_UNEXPECTED, "High", False, gpu_process_unexpected, "process on a GPU not allowed"),
    Rule(GPU_UTILIZATION, "Medium", False, gpu_utilization, "GPU utilization above bound"),
    Rule(GPU_MEMORY, "Medium", False, gpu_memory, "GPU memory above bound"),
    Rule(GPU_POWER, "Medium", False, gpu_power, "GPU power above bound"),
    Rule(GPU_MINING_SIGNATURE, "High", True, gpu_mining_signature, "GPU busy like a miner"),
)
