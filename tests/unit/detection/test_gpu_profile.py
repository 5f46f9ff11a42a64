"""gpu.mining-signature judged by what the GPU computes (its profile), and gpu.processes.exceeded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from trainguard.api.sample import Sample
from trainguard.api.v1alpha1 import AgentTrainingJob, Policy
from trainguard.detection import Engine, EngineContext
from trainguard.detection.engine import ManualClock
from trainguard.detection.replay import replay
from trainguard.detection.rules.gpu import GPU_MINING_SIGNATURE, GPU_PROCESSES_EXCEEDED
from trainguard.detection.trace import LineError, read_samples

from .samples import CTX, GIB, gpu, sample

SIGNATURE = (GPU_MINING_SIGNATURE, "gpu0")

HASH = {"tensorActive": 0.0, "intActive": 0.62, "dramActive": 0.55, "fp16Active": 0.0, "fp32Active": 0.02}
TRAIN = {"tensorActive": 0.48, "intActive": 0.08, "dramActive": 0.41, "fp16Active": 0.12, "fp32Active": 0.15}
PHYSICS = {"tensorActive": 0.03, "intActive": 0.24, "dramActive": 0.18, "fp16Active": 0.0, "fp32Active": 0.57}
INFERENCE = {"tensorActive": 0.33, "intActive": 0.05, "dramActive": 0.72, "fp16Active": 0.09, "fp32Active": 0.04}


def pol(**spec: Any) -> Policy:
    spec.setdefault("enforcement", {"debounce": {"samples": 1}})
    return Policy.model_validate(spec)


def decided(samples: list[Sample], p: Policy | None = None, ctx: EngineContext = CTX) -> dict[tuple[str, str], Any]:
    """The new violations, by (rule, identity), with the evidence of the first."""
    clock = ManualClock()
    engine = Engine(p or pol(), ctx, clock)
    out: dict[tuple[str, str], Any] = {}
    for s in samples:
        clock.set(s.ts)
        for d in engine.observe(s.pod, s):
            if d.kind == "new":
                out.setdefault((d.violation.rule, d.violation.identity), d.violation.evidence)
    return out


def profiled(util: float | None, profile: dict[str, float] | None, t: int, *, memory: float = 70 * GIB) -> Sample:
    g = gpu(util=util, power=300.0 if (util or 0) > 0.5 else 90.0, memory=memory)
    if profile is not None:
        # What the GPU computed over the last second: the active share of the second scales every pipe.
        g["profile"] = {k: round(v * (util if util is not None else 1.0), 4) for k, v in profile.items()}
        g["profile"]["smActive"] = util
    return sample(t=t, gpus=[g])


def duty_cycled(on: int, period: int, profile: dict[str, float], n: int = 60, **kw: Any) -> list[Sample]:
    return [profiled(1.0 if i % period < on else 0.0, profile, i, **kw) for i in range(n)]


def test_a_miner_hashing_7s_of_every_10_is_caught_by_its_profile_however_full_the_memory() -> None:
    found = decided(duty_cycled(7, 10, HASH))
    assert SIGNATURE in found
    ev = found[SIGNATURE]
    assert ev["basis"] == "profile" and ev["duty"] == 0.7 and ev["activeSamples"] == 42
    assert ev["intActive"] == 0.62 and ev["tensorActive"] == 0.0


def test_a_miner_throttled_within_each_second_is_caught() -> None:
    assert SIGNATURE in decided([profiled(0.7, HASH, i) for i in range(60)])


def test_the_profile_needs_a_full_window() -> None:
    assert decided(duty_cycled(7, 10, HASH, n=59)) == {}


def test_below_the_duty_floor_the_miner_is_not_flagged() -> None:
    # The documented blind spot: a miner content with under half the GPU.
    assert decided(duty_cycled(4, 10, HASH)) == {}


@pytest.mark.parametrize(
    ("mix", "why"),
    [(TRAIN, "tensor pipes busy"), (PHYSICS, "FP32 busy: simulation"), (INFERENCE, "tensor pipes busy")],
)
def test_benign_mixes_at_a_flat_100_with_little_memory_are_not_mining(mix: dict[str, float], why: str) -> None:
    # Today's evidence alone would flag these: saturated, flat, power flat, memory at 5%.
    samples = [profiled(1.0, mix, i, memory=4 * GIB) for i in range(90)]
    assert decided(samples) == {}, why
    bare = [sample(t=i, gpus=[gpu(util=1.0, power=300.0, memory=4 * GIB)]) for i in range(90)]
    assert SIGNATURE in decided(bare)  # the false positive the profile removes


def test_a_sample_without_the_profile_falls_back_to_todays_evidence() -> None:
    samples = [profiled(1.0, PHYSICS, i, memory=4 * GIB) for i in range(90)]
    samples[10] = profiled(1.0, None, 10, memory=4 * GIB)
    found = decided(samples)
    # Samples 11..70 are again fully profiled; the window ending at sample 69 still holds the bare sample 10.
    assert SIGNATURE in found and found[SIGNATURE]["basis"] == "utilization"


def test_a_profile_missing_the_fp32_or_both_hash_pipes_is_no_profile() -> None:
    partial = {"tensorActive": 0.0, "fp16Active": 0.0, "fp32Active": 0.0}  # neither int nor dram known
    samples = [profiled(0.7, partial, i) for i in range(60)]
    assert decided(samples) == {}  # and today's evidence needs 90% every sample


def test_the_profile_without_utilization_uses_sm_active() -> None:
    # MIG mode: NVML has no utilization; the profile's smActive says how busy the instance was.
    samples = []
    for i in range(60):
        g = gpu(util=None, power=None, memory=None)
        g["profile"] = {**HASH, "smActive": 0.95}
        samples.append(sample(t=i, gpus=[g]))
    assert decided(samples)[SIGNATURE]["duty"] == 0.95


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(0.0, 1.0), min_size=60, max_size=80),
    st.sampled_from([TRAIN, PHYSICS, INFERENCE]),
)
def test_no_benign_mix_is_mining_whatever_its_duty_cycle(utils: list[float], mix: dict[str, float]) -> None:
    samples = [profiled(u, mix, i, memory=4 * GIB) for i, u in enumerate(utils)]
    assert SIGNATURE not in decided(samples)


@given(st.lists(st.sampled_from([0.0, 1.0]), min_size=60, max_size=60).filter(lambda u: sum(u) >= 30))
@settings(max_examples=40, deadline=None)
def test_any_hashing_duty_cycle_of_at_least_half_is_caught(utils: list[float]) -> None:
    assert SIGNATURE in decided([profiled(u, HASH, i) for i, u in enumerate(utils)])


def test_more_processes_on_a_gpu_than_allowed() -> None:
    trainer = {"pid": 10, "name": "python3", "exe": "/usr/bin/python3", "argv": ["python3", "train.py"]}
    second = {"pid": 11, "name": "python3", "exe": "/usr/bin/python3", "argv": ["python3", "-m", "cache"]}
    p = pol(gpu={"maxProcessesPerGpu": 1})
    found = decided([sample(gpus=[gpu(procs=[trainer, second]), gpu(1, procs=[trainer])])], p)
    assert set(found) == {(GPU_PROCESSES_EXCEEDED, "gpu0")}
    assert found[(GPU_PROCESSES_EXCEEDED, "gpu0")]["processes"] == 2
    assert found[(GPU_PROCESSES_EXCEEDED, "gpu0")]["gpuProcesses"] == ["python3 (pid 10)", "python3 (pid 11)"]
    assert decided([sample(gpus=[gpu(procs=[trainer])])], p) == {}
    assert decided([sample(gpus=[gpu(procs=[trainer, second])])]) == {}  # unset: any number


def test_the_policy_field_is_validated() -> None:
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        Policy.model_validate({"gpu": {"maxProcessesPerGpu": 0}})
    assert Policy.model_validate({"gpu": {"maxProcessesPerGpu": 2}}).gpu.max_processes_per_gpu == 2


# --- the GPU-profile traces without their profile: what the profile changes --------------------------

TRACES = Path(__file__).resolve().parents[3] / "examples" / "traces"


def _replay(trace: str, *, strip_profile: bool) -> set[tuple[str, str, str]]:
    job = AgentTrainingJob.model_validate(yaml.safe_load((TRACES / "policy-gpu.yaml").read_text()))
    scenario = next(s for s in json.loads((TRACES / "scenarios.json").read_text()) if s["trace"] == trace)
    with (TRACES / trace).open("rb") as fh:
        samples = sorted((i for _, i in read_samples(fh, trace) if not isinstance(i, LineError)), key=lambda s: s.ts)
    if strip_profile:
        # The reader gives the samples' msgspec twins (api/wire.py): frozen structs, copied with a change.
        bare = [[msgspec.structs.replace(g, profile=None) for g in s.gpus] for s in samples]
        samples = [msgspec.structs.replace(s, gpus=gpus) for s, gpus in zip(samples, bare, strict=True)]
    ctx = EngineContext(
        dns_resolvers=frozenset(scenario["context"]["dnsResolvers"]),
        job_pod_ips=frozenset(scenario["context"]["podIPs"]),
    )
    return {
        (d.violation.rule, d.violation.pod, d.violation.identity)
        for d in replay(job.spec.policy, samples, ctx, job.spec.monitoring)
    }


@pytest.mark.parametrize(
    ("trace", "with_profile", "without_profile"),
    [
        # The known false positive of today's evidence, gone with the profile.
        ("physics-rl.jsonl", set(), {("gpu.mining-signature", "agents/rl-trainer-worker-0", "gpu0")}),
        # Two evasions today's evidence misses (duty cycle; a dummy buffer filling memory).
        ("throttled-miner.jsonl", {("gpu.mining-signature", "agents/rl-trainer-worker-1", "gpu0")}, set()),
        ("renamed-miner-profiled.jsonl", {("gpu.mining-signature", "agents/rl-trainer-worker-1", "gpu0")}, set()),
        # Full memory, tensor pipes busy: neither reading calls it mining.
        ("llm-inference.jsonl", set(), set()),
    ],
)
def test_what_the_profile_changes_on_the_traces(
    trace: str, with_profile: set[tuple[str, str, str]], without_profile: set[tuple[str, str, str]]
) -> None:
    assert _replay(trace, strip_profile=False) == with_profile
    assert _replay(trace, strip_profile=True) == without_profile
