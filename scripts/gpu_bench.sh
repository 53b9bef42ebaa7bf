#!/usr/bin/env bash
# The single-GPU measurements of the README's GPU section in one go (one device call of ~8 min on an
# H100): `profile` of configs/bench_wan1.3b_dmd.yaml under serial, exact and async (steps 1–20),
# then the small config's async leak check (200 steps, peak memory every 50 steps). With
# ASYNC_LONG=N also an N-step async run of the 1.3B config (stability of `async` on CUDA).
# Writes everything under OUT (default: $OUT if set, as on the device tool, else a temp folder)
# with shallow paths, and prints the tables at the end.
#
#   run(kind=nvidia-h100-x1, carry=["target/run-pipeline-cuda"],
#       command="scripts/gpu_bench.sh target/run-pipeline-cuda")
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/gpu-check-lib.sh"
find_cuda_bin "${1:-}"
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
gpu_env cuda 1

"$bin" --config "$root/configs/bench_wan1.3b_dmd.yaml" --set max_steps=21 --set "logdir=$out/big" \
    --set progress=false profile --schedules "${SCHEDULES:-serial,exact,async}" > "$out/big.log" 2>&1
echo "1.3B profile exit code: $?"
for s in serial exact async; do
    [ -f "$out/big/$s/profile/summary.md" ] && cp "$out/big/$s/profile/summary.md" "$out/summary_$s.md"
done
grep -m3 -h "illegal memory\|out of memory" "$out/big.log" | cut -c1-200

"$bin" --config "$root/configs/bench_small_dmd.yaml" --set schedule=async --steps 200 \
    --set "logdir=$out/leak" --set progress=false train > "$out/leak.log" 2>&1
echo "small async 200 steps exit code: $?"

if [ -n "${ASYNC_LONG:-}" ]; then
    "$bin" --config "$root/configs/bench_wan1.3b_dmd.yaml" --set schedule=async --set max_staleness=1 \
        --set "max_steps=$ASYNC_LONG" --set "logdir=$out/long" --set progress=false train > "$out/long.log" 2>&1
    echo "1.3B async $ASYNC_LONG steps exit code: $?"
    grep -m3 -h "illegal memory\|out of memory" "$out/long.log" | cut -c1-200
fi

cat "$out/big/profile_comparison.md" 2>/dev/null
python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
p = f"{out}/leak/metrics.jsonl"
if os.path.exists(p):
    rows = {r["step"]: r for r in map(json.loads, open(p))}
    print("\n| step | allocated GiB | peak GiB so far |\n|---|---|---|")
    for s in (1, 50, 100, 150, 199):
        if s in rows:
            print(f"| {s} | {rows[s].get('mem_allocated_gib', float('nan')):.3f} | "
                  f"{rows[s].get('peak_mem_gib', float('nan')):.3f} |")
p = f"{out}/long/metrics.jsonl"
if os.path.exists(p):
    rows = [json.loads(l) for l in open(p)]
    print(f"\n1.3B async: {len(rows)} steps logged, peak {max(r['peak_mem_gib'] for r in rows):.1f} GiB")
PY
