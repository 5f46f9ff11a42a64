#!/usr/bin/env bash
# The real NVML and GPM path, on a machine with an NVIDIA GPU (GPM: Hopper or later). Not run in CI (no
# GPU there). From the repository root:
#
#   scripts/gpu-check.sh                 # uses .venv (make venv first)
#   DURATION=70 SAVE=1 scripts/gpu-check.sh
#
# 1. records DURATION seconds (default 70: a full 60-sample window plus the first GPM interval) of the
#    sensor (--gpu-source nvml) under a real GEMM workload (BF16 matrix multiplies: tensor pipes busy),
#    then as long under an integer hash loop (xorshift/multiply rounds, a few lines of CUDA through
#    CuPy, else PyTorch elementwise int32 ops; no mining software);
# 2. prints each recording's profile means, errors, and whether the load's process was attributed;
# 3. replays both through the detection engine: the hash loop must be gpu.mining-signature by its
#    profile, the GEMM must not;
# 4. with SAVE=1, writes both recordings to tests/fixtures/gpu/ with RECORDED.md saying where and
#    when they were recorded on real hardware (tests/unit/sensor/test_gpu_fixtures.py replays them).
#
# Exit status: 0 when every check passed; 1 otherwise. Readings NVML cannot take (MIG mode) print as null.
set -euo pipefail

DURATION="${DURATION:-70}"
TRAINGUARD="${TRAINGUARD:-.venv/bin/trainguard}"
PYTHON="${PYTHON:-.venv/bin/python}"
SAVE="${SAVE:-0}"
work="$(mktemp -d)"
load_pid=""
stop_load() {
  if [[ -n "$load_pid" ]]; then kill "$load_pid" 2>/dev/null || true; wait "$load_pid" 2>/dev/null || true; fi
  load_pid=""
}
cleanup() { stop_load; rm -rf "$work"; }
trap cleanup EXIT

if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "gpu-check: nvidia-smi not found; is there an NVIDIA driver on this machine?" >&2
  exit 1
fi
nvidia-smi --query-gpu=index,uuid,name,driver_version,mig.mode.current --format=csv | tee "$work/gpus.csv"

# Who can drive the GPU: CuPy or PyTorch with CUDA, in the venv or the system python.
load_py="" backend=""
for py in "$PYTHON" python3; do
  if "$py" -c "import cupy; cupy.cuda.runtime.getDeviceCount()" 2>/dev/null; then load_py="$py" backend=cupy; break; fi
  if "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    load_py="$py" backend=torch; break
  fi
done
[[ -n "$load_py" ]] || { echo "gpu-check: no python with CuPy or torch+CUDA; nothing to load the GPU with" >&2; exit 1; }
echo "gpu-check: loads through $backend ($load_py)"

cat > "$work/gemm_load.py" <<'PY'
import sys, time
backend = sys.argv[1]
end = time.time() + 3600
if backend == "torch":
    import torch
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    while time.time() < end:
        for _ in range(20):
            c = a @ b
        torch.cuda.synchronize()
else:
    import cupy as cp
    a = cp.random.random((8192, 8192)).astype(cp.float16)
    b = cp.random.random((8192, 8192)).astype(cp.float16)
    while time.time() < end:
        for _ in range(20):
            c = a @ b
        cp.cuda.Device().synchronize()
PY
cat > "$work/int_hash_load.py" <<'PY'
import sys, time
backend = sys.argv[1]
end = time.time() + 3600
N = 1 << 26
if backend == "cupy":
    import cupy as cp
    # Integer rounds in registers, a read and a write per thread: what a hash loop does (no mining).
    kernel = cp.RawKernel(r'''
    extern "C" __global__ void rounds(unsigned int* x, int n, int k) {
        int i = blockIdx.x * blockDim.x + threadIdx.x;
        if (i >= n) return;
        unsigned int v = x[i];
        for (int r = 0; r < k; r++) { v ^= v << 13; v ^= v >> 17; v ^= v << 5; v = v * 1664525u + 1013904223u; }
        x[i] = v;
    }''', "rounds")
    x = cp.arange(N, dtype=cp.uint32)
    while time.time() < end:
        kernel(((N + 255) // 256,), (256,), (x, cp.int32(N), cp.int32(256)))
        cp.cuda.Device().synchronize()
else:
    import torch
    x = torch.arange(N, dtype=torch.int32, device="cuda")
    while time.time() < end:
        for _ in range(8):
            x ^= x << 13
            x ^= x >> 17
            x ^= x << 5
            x.mul_(1664525).add_(1013904223)
        torch.cuda.synchronize()
PY

record() {  # record <name> <load script>
  "$load_py" "$work/$2" "$backend" &
  load_pid=$!
  echo "gpu-check: $1 running as pid $load_pid; warming up 5 s"
  sleep 5  # CUDA context creation, first kernels
  echo "gpu-check: recording ${DURATION}s of $1 with --gpu-source nvml ..."
  "$TRAINGUARD" sensor --pod gpu-check/"$1" --record "$work/$1.jsonl" --duration "$DURATION" --interval 1 \
    --gpu-source nvml
  stop_load
}
record gemm gemm_load.py
record int-hash int_hash_load.py

"$PYTHON" - "$work" "$SAVE" "$backend" <<'PY'
import datetime, json, shutil, subprocess, sys
from pathlib import Path

from trainguard.api.sample import parse_sample
from trainguard.api.v1alpha1 import Policy
from trainguard.detection import EngineContext
from trainguard.detection.replay import replay

work, save, backend = Path(sys.argv[1]), sys.argv[2] == "1", sys.argv[3]
ok = True
PIPES = ("tensorActive", "dramActive", "intActive", "fp16Active", "fp32Active", "fp64Active", "smActive", "smOccupancy")


def check(what, cond):
    global ok
    print(f"  {'ok  ' if cond else 'FAIL'} {what}")
    ok = ok and bool(cond)


verdicts = {}
for name, script in (("gemm", "gemm_load.py"), ("int-hash", "int_hash_load.py")):
    lines = (work / f"{name}.jsonl").read_bytes().splitlines()
    samples = [parse_sample(line) for line in lines if line.strip()]
    print(f"{name}: {len(samples)} samples")
    errors = sorted({f"{e.kind}: {e.message}" for s in samples for e in s.sensor.errors})
    print("  errors seen:", *(errors or ["none"]), sep="\n    ")
    check("the sensor saw a GPU", samples and samples[-1].gpus)
    for g in samples[-1].gpus:
        profiles = [gg.profile for s in samples for gg in s.gpus if gg.index == g.index and gg.profile]
        check(f"GPU {g.index}: a GPM profile in all but the first sample", len(profiles) >= len(samples) - 1)
        means = {}
        for p in PIPES:
            known = [v for v in (pr.model_dump(by_alias=True)[p] for pr in profiles) if v is not None]
            means[p] = round(sum(known) / len(known), 3) if known else None
        print(f"  GPU {g.index} {g.uuid}: profile means {means}")
        if name == "gemm":
            check("GEMM: tensor pipes busy (> 0.2)", (means["tensorActive"] or 0) > 0.2)
        else:
            check("hash loop: tensor pipes idle (< 0.05)", (means["tensorActive"] or 0) < 0.05)
            check("hash loop: integer pipes or DRAM busy (>= 0.2)", max(means["intActive"] or 0, means["dramActive"] or 0) >= 0.2)
    attributed = any(script in " ".join(p.argv) for s in samples for g in s.gpus for p in g.processes)
    check(f"the load's GPU process attributed to {script}", attributed)
    decisions = replay(Policy(), samples, EngineContext())
    verdicts[name] = {d.violation.rule for d in decisions if d.kind == "new"}
    print(f"  rules raised on replay: {sorted(verdicts[name]) or 'none'}")
check("the hash loop is gpu.mining-signature by its profile", "gpu.mining-signature" in verdicts["int-hash"])
check("the GEMM is not gpu.mining-signature", "gpu.mining-signature" not in verdicts["gemm"])

if save:
    out = Path("tests/fixtures/gpu")
    out.mkdir(parents=True, exist_ok=True)
    for name in ("gemm", "int-hash"):
        shutil.copy(work / f"{name}.jsonl", out / f"{name}.jsonl")
    smi = (work / "gpus.csv").read_text()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    (out / "RECORDED.md").write_text(
        "# Recorded on real hardware\n\n"
        f"By scripts/gpu-check.sh on {when}: the sensor with `--gpu-source nvml` (NVML and GPM), "
        f"loads through {backend}. Not generated; do not edit.\n\n"
        "- `gemm.jsonl`: BF16/FP16 matrix multiplies (tensor pipes busy).\n"
        "- `int-hash.jsonl`: an integer hash loop (xorshift and multiply rounds; no mining software).\n\n"
        f"```\n{smi}```\n"
    )
    print(f"gpu-check: wrote {out}/gemm.jsonl, int-hash.jsonl, RECORDED.md")
print("gpu-check:", "OK" if ok else "FAILED")
sys.exit(0 if ok else 1)
PY
