#!/usr/bin/env bash
# ZeRO-1 check on a multi-GPU host (NCCL): the bench_small_dmd config (configs/bench_small_dmd.yaml,
# batch B = 4 per process by default) trained by torchrun with NPROC processes (one GPU each)
#   1. with the replicated optimizer state (zero_stage: 0, plain data parallelism), and
#   2. with ZeRO-1 (zero_stage: 1: f32 masters and AdamW moments sharded over the processes),
# for the same steps and seed, then
#   3. a ZeRO-1 run that writes checkpoints (NCCL gathers of the sharded state), resumed by one
#      process with batch NPROC·B (the replicated optimizer) for two more steps.
# Prints the per-step losses of runs 1 and 2, their steps/s, the optimizer-state line ZeRO-1 logs
# at start, and the per-GPU (= per-rank) peak memory of runs 1 and 2: nvidia-smi's memory.used
# sampled every 200 ms (CUDA context + the caching allocator's reservation), and rank 0's
# allocator peak (`peak_mem_gib` in metrics.jsonl).
#
# The first step's generator loss is computed before any update, so it must agree exactly; the
# rest differs by bf16 rounding (the replicated optimizer rounds the averaged gradients back to
# bf16 before AdamW, ZeRO-1 keeps its reduced shard in f32) and grows with training.
#
# From the build machine through the device tool (after make build-cuda):
#   run(kind=nvidia-h100-x2, carry=["target/run-pipeline-cuda"],
#       command="scripts/zero_gpu_check.sh target/run-pipeline-cuda 2")
#   run(kind=nvidia-h100-x4, carry=["target/run-pipeline-cuda"],
#       command="scripts/zero_gpu_check.sh target/run-pipeline-cuda 4")
# The saving shows on large models (bench_small's tiny Wan holds a few MB of optimizer state);
# skip the checkpoint round trip there (a 1.3B checkpoint holds ~31 GB of optimizer state):
#   CONFIG=configs/bench_wan1.3b_dmd.yaml BATCH=1 STEPS=11 ZERO_CHECK_CKPT=0 scripts/zero_gpu_check.sh … 2
#
#   scripts/zero_gpu_check.sh [BINARY] [NPROC]
#     BINARY  the cuda build of run-pipeline (default: target/run-pipeline-cuda, from make build-cuda,
#             else target-cuda/release/run-pipeline)
#     NPROC   processes = GPUs (default 2)
#   Environment: STEPS (default 30), BATCH (per process, default 4), CONFIG (default
#   configs/bench_small_dmd.yaml), OUT (default: a temp folder), ZERO_CHECK_DEVICE=cpu (smoke test
#   of this script on a CPU machine: Gloo), ZERO_CHECK_TOL (relative tolerance of the first step's
#   critic loss, default 0.02: bf16), ZERO_CHECK_CKPT=0 (skip run 3).
#
# Exit 0 when every run finished, the torchrun runs used NCCL (unless ZERO_CHECK_DEVICE=cpu), the
# first step's generator loss is identical and its critic loss agrees within ZERO_CHECK_TOL.
# NVLink multicast stays off (NCCL_NVLS_ENABLE=0).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

. "$here/gpu-check-lib.sh"
find_cuda_bin "${1:-}"
nproc=${2:-2}
steps=${STEPS:-30}
batch=${BATCH:-4}
device=${ZERO_CHECK_DEVICE:-cuda}
tol=${ZERO_CHECK_TOL:-0.02}
cfg=${CONFIG:-$root/configs/bench_small_dmd.yaml}
out=${OUT:-$(mktemp -d)}

gpu_env "$device" "$nproc"

common=(--config "$cfg" --set "device=$device" --set progress=false)
echo "== host $(hostname): $nproc processes, batch $batch per process, $steps steps; config $cfg; binary $bin; out $out"

# Runs "$@" while sampling every GPU's memory.used (MiB) into $out/$name.mem; the peak per GPU is
# printed by the comparison below.
sampled() {
    local name=$1; shift
    local pid=
    if [ "$device" = cuda ]; then
        nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits -lms 200 \
            > "$out/$name.mem" 2>/dev/null &
        pid=$!
    fi
    local rc=0
    "$@" 2>&1 | tee "$out/$name.log" || rc=$?
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    return $rc
}

rc=0
for z in 0 1; do
    echo "== zero_stage $z: ${run[*]} --standalone --nproc_per_node=$nproc --no-python $bin … batch $batch"
    sampled "zero$z" "${run[@]}" --standalone --nproc_per_node="$nproc" --no-python "$bin" "${common[@]}" \
        --set "batch_size=$batch" --set "max_steps=$steps" --set "zero_stage=$z" --logdir "$out/zero$z" || rc=1
    if [ "$device" = cuda ] && ! grep -q "backend Nccl" "$out/zero$z.log"; then
        echo "== FAIL: the zero_stage $z run did not use NCCL (no GPU visible to the binary?)"
        rc=1
    fi
done

if [ "${ZERO_CHECK_CKPT:-1}" != 0 ]; then
    echo "== ZeRO-1 checkpoints at steps 2 and 4 (gathers of the sharded state), then one process with batch $((nproc * batch)) resumes to step 6"
    "${run[@]}" --standalone --nproc_per_node="$nproc" --no-python "$bin" "${common[@]}" \
        --set "batch_size=$batch" --set max_steps=4 --set zero_stage=1 --set save_checkpoints=true \
        --set log_iters=2 --logdir "$out/ckpt" > "$out/ckpt.log" 2>&1 || { echo "== FAIL: ZeRO-1 run with checkpoints"; tail -20 "$out/ckpt.log"; rc=1; }
    "$bin" "${common[@]}" --set "batch_size=$((nproc * batch))" --set max_steps=6 --set zero_stage=0 \
        --set save_checkpoints=true --set log_iters=2 --logdir "$out/ckpt" --resume > "$out/resume.log" 2>&1 \
        || { echo "== FAIL: resuming the ZeRO-1 checkpoint in one process"; tail -20 "$out/resume.log"; rc=1; }
    [ -d "$out/ckpt/checkpoints/step_000006" ] && echo "== checkpoint round trip: ok" || { echo "== FAIL: no step-6 checkpoint"; rc=1; }
fi

echo "== optimizer state per rank (ZeRO-1 run):"
grep "zero_stage 1: " "$out/zero1.log" || { echo "== FAIL: no zero_stage line"; rc=1; }

python3 - "$out" "$nproc" "$tol" <<'EOF' || rc=1
import json, os, re, sys
out, nproc, tol = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
def lines(d):
    return [json.loads(l) for l in open(f"{out}/{d}/metrics.jsonl")]
def speed(log):
    m = re.findall(r"([0-9.]+) steps/s", open(f"{out}/{log}.log").read())
    return float(m[-1]) if m else float("nan")
def gpu_peaks(name):
    peaks = {}
    p = f"{out}/{name}.mem"
    if os.path.exists(p):
        for l in open(p):
            try:
                i, mib = (int(x) for x in l.split(","))
            except ValueError:
                continue
            peaks[i] = max(peaks.get(i, 0), mib)
    return peaks
a, b = lines("zero0"), lines("zero1")
keys = ["generator_loss", "critic_loss", "generator_grad_norm", "critic_grad_norm"]
print(f"{'step':>5} " + " ".join(f"{k + ' z0':>22} {k + ' z1':>22} {'rel':>8}" for k in keys[:2]))
worst = {}
for x, y in zip(a, b):
    row = [f"{x['step']:>5}"]
    for k in keys:
        u, v = x.get(k), y.get(k)
        r = None if u is None or v is None else abs(u - v) / max(abs(u), 1e-6)
        if r is not None:
            worst[k] = max(worst.get(k, 0.0), r)
        if k in keys[:2]:
            row.append(f"{'' if u is None else f'{u:.6f}':>22} {'' if v is None else f'{v:.6f}':>22} "
                       f"{'' if r is None else f'{r:.1e}':>8}")
    print(" ".join(row))
print("max relative difference over the run: " + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
print(f"steps/s: zero_stage 0 {speed('zero0'):.2f}, zero_stage 1 {speed('zero1'):.2f}")
for z in (0, 1):
    peaks = gpu_peaks(f"zero{z}")
    alloc = max((l.get("peak_mem_gib", 0.0) for l in lines(f"zero{z}")), default=float("nan"))
    gpus = ", ".join(f"GPU{i} {mib / 1024:.2f} GiB" for i, mib in sorted(peaks.items())) or "n/a"
    print(f"peak memory zero_stage {z}: nvidia-smi memory.used per rank: {gpus}; "
          f"rank 0 allocator peak {alloc:.2f} GiB")
ok = len(a) == len(b) and len(a) > 0
g0, g1 = a[0].get("generator_loss"), b[0].get("generator_loss")
c0, c1 = a[0].get("critic_loss"), b[0].get("critic_loss")
if g0 is None or g0 != g1:
    print(f"== FAIL: first-step generator loss {g0} vs {g1} (computed before any update: must be equal)")
    ok = False
crel = abs(c0 - c1) / max(abs(c0), 1e-6) if c0 is not None and c1 is not None else float("inf")
print("== first-step agreement:", "ok" if ok and crel <= tol else "FAIL",
      f"(generator loss equal: {g0 == g1}; critic loss rel {crel:.1e}, tol {tol})")
sys.exit(0 if ok and crel <= tol else 1)
EOF
echo "== zero_gpu_check exit code: $rc"
exit $rc
