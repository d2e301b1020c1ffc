#!/usr/bin/env bash
# The GPU checks of docs/performance.md in one run (about 6-8 minutes on an H200).
#
#   bash benchmarks/gpu_check.sh OUT_DIR
#
# 1. the CUDA tests and three shipped scenarios on the GPU; 2. fedsim vs the hand-written limits (vmapped, fused) at 10k and
# 100k clients; 3. one round of 1M clients (20 samples each) and of a 100k cohort with
# the overhead breakdown. Each bench's JSON line goes to OUT_DIR/<name>.json, its report
# to OUT_DIR/<name>.log. Needs torch with CUDA, numpy, networkx, simpy (fedsim's
# requirements; flwr and opacus only for the tests that use them).
set -u
out=${1:?usage: gpu_check.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 FEDSIM_TORCH_THREADS=1
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"

run() {  # run NAME ARGS...: one bench, JSON line and report kept apart
  local name=$1; shift
  timeout 300 "$py" -m fedsim bench "$@" >"$out/$name.json" 2>"$out/$name.log"
  echo "$name: exit $? $(tail -c 400 "$out/$name.json")"
}

timeout 240 "$py" -m pytest -q -p no:cacheprovider -k "cuda or gpu or device" tests/ \
  >"$out/tests.log" 2>&1; echo "tests: exit $? $(tail -n 1 "$out/tests.log")"
for s in quickstart gossip_ring robust_bgmd; do  # end to end on the GPU: CSR, buffer, mixing
  timeout 120 "$py" -m fedsim run "scenarios/$s.toml" --set device=cuda --set rounds=3 \
    --out "$out/runs" --overwrite >"$out/run_$s.log" 2>&1; echo "run $s: exit $?"
done
run limit_10k limit --device cuda --clients 10000 --rounds 3 --repeats 3 --no-breakdown
run limit_100k limit --device cuda --clients 100000 --rounds 2 --repeats 2 --no-breakdown \
  --no-chunked-limit
run scale_100k scale --device cuda --population 100000 --cohort 100000 \
  --samples-per-client 10 --rounds 3
run scale_1m scale --device cuda --population 1000000 --cohort 1000000 \
  --samples-per-client 20 --rounds 3
