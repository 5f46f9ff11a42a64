#!/usr/bin/env bash
# Run the sensor against real NVML on a machine with an NVIDIA GPU, for 30 s, under a small GPU load,
# and print what it saw. Not run in CI (no GPU there). Usage, from the repository root:
#
#   scripts/gpu-check.sh            # uses .venv/bin/trainguard (make venv first)
#   DURATION=60 scripts/gpu-check.sh
#
# Exit status: 0 when the sensor saw at least one GPU and (if a load ran) a GPU process attributed
# to the load's arguments; 1 otherwise. Readings NVML cannot take (MIG mode) print as null.
set -euo pipefail

DURATION="${DURATION:-30}"
TRAINGUARD="${TRAINGUARD:-.venv/bin/trainguard}"
PYTHON="${PYTHON:-.venv/bin/python}"
work="$(mktemp -d)"
load_pid=""
cleanup() {
  if [[ -n "$load_pid" ]]; then kill "$load_pid" 2>/dev/null || true; wait "$load_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "gpu-check: nvidia-smi not found; is there an NVIDIA driver on this machine?" >&2
fi
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=index,uuid,name,driver_version --format=csv || true

# A small load: a CUDA matmul loop through torch if some python here has torch, else none.
load_cmd=""
for py in "$PYTHON" python3; do
  if "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    load_cmd="$py"
    break
  fi
done
if [[ -n "$load_cmd" ]]; then
  cat > "$work/gpu_load.py" <<'PY'
import time, torch
x = torch.randn(2048, 2048, device="cuda")
end = time.time() + 3600
while time.time() < end:
    y = x @ x
    torch.cuda.synchronize()
    time.sleep(0.01)
PY
  "$load_cmd" "$work/gpu_load.py" &
  load_pid=$!
  echo "gpu-check: load running as pid $load_pid ($load_cmd gpu_load.py)"
  sleep 5  # CUDA context creation
else
  echo "gpu-check: no python with torch+CUDA found; sampling an idle GPU (no process attribution check)"
fi

echo "gpu-check: recording ${DURATION}s with --gpu-source nvml ..."
"$TRAINGUARD" sensor --record "$work/trace.jsonl" --duration "$DURATION" --interval 1 --gpu-source nvml

"$PYTHON" - "$work/trace.jsonl" "${load_pid:-0}" <<'PY'
import json, sys
path, load_pid = sys.argv[1], int(sys.argv[2])
samples = [json.loads(line) for line in open(path)]
print(f"samples: {len(samples)}, seq {samples[0]['seq']}..{samples[-1]['seq']}")
errors = sorted({f"{e['kind']}: {e['message']}" for s in samples for e in s["sensor"]["errors"]})
print("errors seen:", *(errors or ["none"]), sep="\n  ")
gpus = samples[-1]["gpus"]
ok = bool(gpus)


def shown(value, scale=1.0, fmt="{:.0f}"):
    return "null (NVML cannot take it)" if value is None else fmt.format(value / scale)


for g in gpus:
    utils = [gg["utilization"] for s in samples for gg in s["gpus"] if gg["index"] == g["index"]]
    known = [u for u in utils if u is not None]
    util_text = f"max {max(known):.2f} mean {sum(known)/len(known):.2f}" if known else "null (NVML cannot take it)"
    print(f"GPU {g['index']} {g['uuid']}: utilization {util_text}, "
          f"memory {shown(g.get('memoryUsedBytes'), 2**20)}/{shown(g.get('memoryTotalBytes'), 2**20)} MiB, "
          f"power {shown(g.get('powerWatts'))} W, SM clock {shown(g.get('smClockMHz'))} MHz")
    for p in g["processes"]:
        argv = " ".join(p.get("argv") or [])
        print(f"  NVML pid {p['pid']}: {shown(p.get('usedMemoryBytes'), 2**20)} MiB, "
              f"attributed to: {argv or '(unattributed)'} {p.get('exe') or ''}")
if load_pid:
    attributed = any("gpu_load.py" in " ".join(p.get("argv") or []) for g in gpus for p in g["processes"])
    print("load attributed:", attributed)
    ok = ok and attributed
print("gpu-check:", "OK" if ok else "FAILED")
sys.exit(0 if ok else 1)
PY
