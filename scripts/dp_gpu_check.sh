#!/usr/bin/env bash
# Data-parallel training check on a multi-GPU host (NCCL): the bench_small_dmd config
# (configs/bench_small_dmd.yaml, batch B = 4 per process by default) trained
#   1. by one process on one GPU with batch NPROC·B, and
#   2. by torchrun with NPROC processes (one GPU each) with batch B,
# for the same steps and seed. Both runs draw the same rows (keyed by global row), so their logged
# losses and gradient norms must agree up to float summation order and bf16 kernel choices (the
# per-process batch differs). Prints the per-step comparison, the steps/s of both runs and the
# scaling line (speed-up of the NPROC-process run over the one process at the same global batch).
#
# From the build machine through the device tool (after make build-cuda):
#   run(kind=nvidia-h100-x2, carry=["target/run-pipeline-cuda"],
#       command="scripts/dp_gpu_check.sh target/run-pipeline-cuda 2")
#
#   scripts/dp_gpu_check.sh [BINARY] [NPROC]
#     BINARY  the cuda build of run-pipeline (default: target/run-pipeline-cuda, from make build-cuda,
#             else target-cuda/release/run-pipeline)
#     NPROC   processes = GPUs (default 2)
#   Environment: STEPS (default 60), BATCH (per process, default 4), OUT (default: a temp folder),
#   DP_CHECK_DEVICE=cpu (smoke test of this script on a CPU machine: Gloo, 2 steps suffice),
#   DP_CHECK_TOL (relative tolerance of the first step's losses, default 0.02: bf16 kernels).
#
# Exit 0 when both runs finished, the torchrun run used NCCL (unless DP_CHECK_DEVICE=cpu), and the
# first step's losses agree within DP_CHECK_TOL. Later steps are printed, not judged: bf16
# rounding differences grow with training. NVLink multicast stays off (NCCL_NVLS_ENABLE=0).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

. "$here/gpu-check-lib.sh"
find_cuda_bin "${1:-}"
nproc=${2:-2}
steps=${STEPS:-60}
batch=${BATCH:-4}
device=${DP_CHECK_DEVICE:-cuda}
tol=${DP_CHECK_TOL:-0.02}
out=${OUT:-$(mktemp -d)}
cfg="$root/configs/bench_small_dmd.yaml"

gpu_env "$device" "$nproc"

common=(--config "$cfg" --set "device=$device" --set "max_steps=$steps" --set progress=false)
echo "== host $(hostname): $nproc processes, batch $batch per process, $steps steps; binary $bin; out $out"

echo "== 1 process, batch $((nproc * batch))"
"$bin" "${common[@]}" --set "batch_size=$((nproc * batch))" --logdir "$out/single" 2>&1 | tee "$out/single.log"
echo "== ${run[*]} --standalone --nproc_per_node=$nproc --no-python $bin … batch $batch"
"${run[@]}" --standalone --nproc_per_node="$nproc" --no-python "$bin" "${common[@]}" \
    --set "batch_size=$batch" --logdir "$out/dp" 2>&1 | tee "$out/dp.log"

rc=0
if [ "$device" = cuda ] && ! grep -q "backend Nccl" "$out/dp.log"; then
    echo "== FAIL: the torchrun run did not use NCCL (no GPU visible to the binary?)"
    rc=1
fi
python3 - "$out" "$nproc" "$tol" <<'EOF' || rc=1
import json, re, sys
out, nproc, tol = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
def lines(d):
    return [json.loads(l) for l in open(f"{out}/{d}/metrics.jsonl")]
def speed(log):
    m = re.findall(r"([0-9.]+) steps/s", open(f"{out}/{log}.log").read())
    return float(m[-1]) if m else float("nan")
a, b = lines("single"), lines("dp")
keys = ["generator_loss", "critic_loss", "generator_grad_norm", "critic_grad_norm"]
print(f"{'step':>5} " + " ".join(f"{k + ' 1p':>22} {k + f' {nproc}p':>22} {'rel':>8}" for k in keys[:2]))
worst, first = {}, None
for x, y in zip(a, b):
    row = [f"{x['step']:>5}"]
    for k in keys:
        u, v = x.get(k), y.get(k)
        r = None if u is None or v is None else abs(u - v) / max(abs(u), 1e-6)
        if r is not None:
            worst[k] = max(worst.get(k, 0.0), r)
            if first is None and k.endswith("_loss"):
                first = r
        if k in keys[:2]:
            row.append(f"{'' if u is None else f'{u:.6f}':>22} {'' if v is None else f'{v:.6f}':>22} "
                       f"{'' if r is None else f'{r:.1e}':>8}")
    print(" ".join(row))
print("max relative difference over the run: " + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
s1, sn = speed("single"), speed("dp")
print(f"steps/s: 1 process {s1:.2f}, {nproc} processes {sn:.2f}")
print(f"scaling: {nproc} processes x batch B vs 1 process x batch {nproc}B (same global batch): "
      f"{sn / s1:.2f}x (at most {nproc}x; less when one GPU is not saturated by {nproc}B rows)")
ok = len(a) == len(b) and len(a) > 0 and first is not None and first <= tol
print("== first-step loss agreement:", "ok" if ok else "FAIL", f"(rel {first}, tol {tol})")
sys.exit(0 if ok else 1)
EOF
echo "== dp_gpu_check exit code: $rc"
exit $rc
