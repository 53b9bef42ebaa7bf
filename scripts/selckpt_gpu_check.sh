#!/usr/bin/env bash
# Selective activation checkpointing on one GPU: `profile --schedules exact` of
# configs/bench_wan1.3b_dmd.yaml (steps 1–20 steady window) for each value of
# checkpoint_keep_attention in MODES (default "fake none": the critic keeps each block's
# self-attention output + log-sum-exp so its backward does not run attention again, against whole
# blocks recomputed), then the comparison rows (seconds per iteration, critic/generator step times,
# MFU, peak memory, losses) one above the other. Measured on an H100 80GB: 4.55 s/iter, 42.9 %,
# 75.9 GiB (fake) against 4.89 s, 39.9 %, 73.1 GiB (none); `all` runs out of memory under exact.
#
#   run(kind=nvidia-h100-x1, carry=["target-cuda/release/run-pipeline"],
#       command="scripts/selckpt_gpu_check.sh")
#   scripts/selckpt_gpu_check.sh [BINARY]    # default: target/run-pipeline-cuda or
#                                            # target-cuda/release/run-pipeline
# Environment: OUT (default: a temp folder), STEPS (default 21), MODES (default "fake none").
# Exit 0 when every run finished.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/gpu-check-lib.sh"
find_cuda_bin "${1:-}"
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
gpu_env cuda 1
steps=${STEPS:-21}
status=0

for mode in ${MODES:-fake none}; do
    keep=$mode
    "$bin" --config "$root/configs/bench_wan1.3b_dmd.yaml" --set "max_steps=$steps" \
        --set "checkpoint_keep_attention=$keep" --set "logdir=$out/keep_$mode" \
        --set progress=false profile --schedules exact > "$out/keep_$mode.log" 2>&1
    rc=$?
    echo "keep_attention=$mode: profile exit code $rc"
    [ "$rc" -eq 0 ] || status=1
    grep -m3 -h "illegal memory\|out of memory\|attention_from_saved\|attention_with_lse" \
        "$out/keep_$mode.log" | cut -c1-300
    [ -f "$out/keep_$mode/exact/profile/summary.md" ] &&
        cp "$out/keep_$mode/exact/profile/summary.md" "$out/summary_keep_$mode.md"
done

# The comparison table of each run: header once, then the `exact` row tagged with the mode.
header_done=0
for mode in ${MODES:-fake none}; do
    f="$out/keep_$mode/profile_comparison.md"
    [ -f "$f" ] || { echo "keep_attention=$mode: no $f"; continue; }
    if [ "$header_done" -eq 0 ]; then
        grep -m2 '^|' "$f"
        header_done=1
    fi
    grep '^| *exact' "$f" | sed "s/^| *exact/| exact keep_attention=$mode/"
done
# The first steps' losses of both runs (computed before bf16 differences can accumulate).
python3 - "$out" ${MODES:-fake none} <<'PY'
import json, os, sys
out, modes = sys.argv[1], sys.argv[2:]
for m in modes:
    p = f"{out}/keep_{m}/exact/metrics.jsonl"
    if not os.path.exists(p):
        continue
    rows = [json.loads(l) for l in open(p)][:3]
    print(f"keep_attention={m}: " + "; ".join(
        f"step {r.get('step')}: critic {r.get('critic_loss')} generator {r.get('generator_loss')}"
        for r in rows))
PY
exit $status
