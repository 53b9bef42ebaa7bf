#!/usr/bin/env bash
# Disaggregated placement check on a 2-GPU host, ONE process: pipelines/self_forcing_2gpu.yaml puts
# the critic-lane rollouts (rollout_c, prompts_c) and the frozen real score on cuda:1 and everything
# that trains on cuda:0; packets move between the GPUs and generator snapshots are copied to cuda:1.
#   1. CONFIG (default configs/bench_small_dmd.yaml) under `exact` on one GPU and on two: the
#      losses must agree (the same kernels on the same card type; only where tensors live differs);
#      prints both runs' steps/s.
#   2. With BIG=1 also `run-pipeline profile` of configs/bench_wan1.3b_dmd.yaml (max_steps 21)
#      under `exact` and `async` with the two-GPU placement: s/iter, MFU, peak memory per GPU.
#
#   run(kind=nvidia-h100-x2, carry=["target/run-pipeline-cuda"],
#       command="BIG=1 scripts/disagg_gpu_check.sh target/run-pipeline-cuda")
#
#   scripts/disagg_gpu_check.sh [BINARY]    Environment: STEPS (default 40), OUT, DISAGG_TOL (relative
#   tolerance on every logged loss, default 1e-3), BIG=1, BIG_SCHEDULES (default exact,async).
# Exit 0 when both runs finished and every logged loss agrees within DISAGG_TOL.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/gpu-check-lib.sh"
find_cuda_bin "${1:-}"
steps=${STEPS:-40}
tol=${DISAGG_TOL:-1e-3}
cfg=${CONFIG:-$root/configs/bench_small_dmd.yaml}
out=${OUT:-$(mktemp -d)}
gpu_env cuda 2

common=(--config "$cfg" --set schedule=exact --set progress=false --steps "$steps")
"$bin" "${common[@]}" --set "logdir=$out/one" train > "$out/one.log" 2>&1 || { tail -20 "$out/one.log"; exit 1; }
"$bin" "${common[@]}" --set "logdir=$out/two" --set "pipeline=$root/pipelines/self_forcing_2gpu.yaml" train \
    > "$out/two.log" 2>&1 || { tail -20 "$out/two.log"; exit 1; }

python3 - "$out/one/metrics.jsonl" "$out/two/metrics.jsonl" "$tol" <<'PY'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
tol = float(sys.argv[3])
assert len(a) == len(b), (len(a), len(b))
worst = 0.0
for x, y in zip(a, b):
    for k in ("generator_loss", "critic_loss"):
        if k in x:
            d = abs(x[k] - y[k]) / max(abs(x[k]), 1e-12)
            worst = max(worst, d)
def rate(r):
    return (len(r) - 1) / (r[-1]["time_s"] - r[0]["time_s"])
print(f"one GPU: {rate(a):.2f} steps/s; two GPUs (rollout_c, real_score on cuda:1): {rate(b):.2f} steps/s "
      f"({rate(b) / rate(a):.2f}x); max relative loss difference {worst:.2e} over {len(a)} steps")
sys.exit(0 if worst <= tol else 1)
PY
rc=$?
if [ "${BIG:-0}" = 1 ]; then
    "$bin" --config "$root/configs/bench_wan1.3b_dmd.yaml" --set max_steps=21 --set "logdir=$out/big" \
        --set "pipeline=$root/pipelines/self_forcing_2gpu.yaml" profile --schedules "${BIG_SCHEDULES:-exact,async}" \
        > "$out/big.log" 2>&1 || { grep -v '^step' "$out/big.log" | tail -20; }
    cat "$out/big/profile_comparison.md" 2>/dev/null || true
    grep -h "peak memory" "$out"/big/*/profile/summary.md 2>/dev/null || true
fi
exit $rc
