"""Recordings of the real NVML+GPM path (scripts/gpu-check.sh SAVE=1 on a GPU machine), replayed.

The recordings are committed only where a GPU machine recorded them (tests/fixtures/gpu/RECORDED.md
says where and when); without them this test is skipped and says why.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from trainguard.api.sample import Sample, parse_sample
from trainguard.api.v1alpha1 import Policy
from trainguard.detection import EngineContext
from trainguard.detection.replay import replay

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "gpu"


def _recording(name: str) -> list[Sample]:
    path = FIXTURES / f"{name}.jsonl"
    if not path.exists():
        pytest.skip(f"{path.relative_to(FIXTURES.parents[2])} not recorded: needs a GPU machine (scripts/gpu-check.sh)")
    return [parse_sample(line) for line in path.read_bytes().splitlines() if line.strip()]


@pytest.mark.parametrize(("name", "mining"), [("gemm", False), ("int-hash", True)])
def test_a_real_recording_is_judged_by_its_profile(name: str, mining: bool) -> None:
    samples = _recording(name)
    assert (FIXTURES / "RECORDED.md").exists(), "a recording says where it was recorded"
    assert sum(1 for s in samples for g in s.gpus if g.profile is not None) >= 60
    rules = {d.violation.rule for d in replay(Policy(), samples, EngineContext()) if d.kind == "new"}
    assert ("gpu.mining-signature" in rules) is mining
