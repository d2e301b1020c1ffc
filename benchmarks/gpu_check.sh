#!/usr/bin/env bash
# The GPU checks of docs/performance.md in one run (about 6-8 minutes on an H200).
#
#   bash benchmarks/gpu_check.sh OUT_DIR
#
# 1. the CUDA tests and three shipped scenarios on the GPU; 2. fedsim vs the hand-written
# limits (vmapped, fused) at 10k and 100k clients; 3. one round of 1M clients (20 samples
# each) and of a 100k cohort with the overhead breakdown; 4. benchmarks/gpu_summary.py's
# table of the targets, OUT_DIR/summary.md. Each bench's JSON line goes to
# OUT_DIR/<name>.json, its report to OUT_DIR/<name>.log, a line per step to
# OUT_DIR/status.txt. Needs torch with CUDA, numpy, networkx, simpy, psutil (flwr and
# opacus are not used). On a lent machine without simpy, see "The GPU check" in
# docs/performance.md (benchmarks/gpu_wheels.sh fetches it as a wheel).
#
# Dry run of every command, small and on the CPU (a minute or two):
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_SMALL=1 bash benchmarks/gpu_check.sh /tmp/gpu_dry
set -u
out=${1:?usage: gpu_check.sh OUT_DIR}
mkdir -p "$out" 2>/dev/null && : >"$out/status.txt" 2>/dev/null \
  || { echo "gpu_check.sh: cannot write to OUT_DIR $out" >&2; exit 2; }
export PYTHONUNBUFFERED=1 FEDSIM_TORCH_THREADS=1
py=${PYTHON:-python3}
if ! "$py" -c 'import torch, numpy, networkx, simpy, psutil' 2>/dev/null; then
  echo "gpu_check.sh: $py lacks one of torch, numpy, networkx, simpy, psutil" >&2; exit 2
fi
dev=${GPU_CHECK_DEVICE:-cuda}
if [ -n "${GPU_CHECK_SMALL:-}" ]; then k10=200 k100=400 m1=1000; else k10=10000 k100=100000 m1=1000000; fi
runs=$(mktemp -d)
trap 'rm -rf "$runs"' EXIT

note() { echo "$*" | tee -a "$out/status.txt"; }
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$out/gpu.txt"
fi
note "device $dev: $(cat "$out/gpu.txt" 2>/dev/null || echo no nvidia-smi); $("$py" -c \
  'import torch; print("torch", torch.__version__)')"

bench() {  # bench NAME ARGS...: one bench, JSON line and report kept apart
  local name=$1; shift
  timeout 300 "$py" -m fedsim bench "$@" --device "$dev" >"$out/$name.json" 2>"$out/$name.log"
  note "$name: exit $?"
}

# the tests that take a device (CUDA ones skip without a GPU); these files need neither
# flwr nor opacus
timeout 240 "$py" -m pytest -o addopts= -q -rfEs -p no:cacheprovider -k "cuda or gpu or device" \
  tests/test_fastmlp.py tests/test_population.py tests/test_population_semantics.py \
  tests/test_packaging.py tests/test_resources.py tests/test_server_opt.py \
  tests/test_round_cost.py >"$out/tests.log" 2>&1
note "tests: exit $? ($(grep -Eo '[0-9]+ (passed|failed|skipped|errors?)' "$out/tests.log" | xargs))"
for s in quickstart gossip_ring robust_bgmd; do  # end to end on the device: CSR, buffer, mixing
  timeout 120 "$py" -m fedsim run "scenarios/$s.toml" --set "device=$dev" --set rounds=3 \
    --out "$runs" --overwrite >"$out/run_$s.log" 2>&1
  note "run $s: exit $?"
done
bench limit_10k limit --clients $k10 --rounds 3 --repeats 3 --no-breakdown
bench limit_100k limit --clients $k100 --rounds 2 --repeats 2 --no-breakdown --no-chunked-limit
bench scale_100k scale --population $k100 --cohort $k100 --samples-per-client 10 --rounds 3
bench scale_1m scale --population $m1 --cohort $m1 --samples-per-client 20 --rounds 3
"$py" benchmarks/gpu_summary.py "$out"
