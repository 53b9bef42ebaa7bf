#!/usr/bin/env bash
# GPU check of `run-pipeline sample` (CPU is covered by tests/sample_cli.rs): a short toy run on
# cuda (bf16 compute with f32 masters when mixed_precision is on), then sampling from its
# checkpoint on cuda with the generator and the EMA, twice with the same seed (the latents must be
# byte-identical; the toy's quality report is printed), and the plots the run wrote.
#
#   scripts/gpu_sample_check.sh [BIN] [WORKDIR]
#     BIN      a run-pipeline built with `make build-cuda` (default: target/run-pipeline-cuda)
#     WORKDIR  where the run and samples go (default: a fresh temporary folder)
#
# On a machine other than the build machine, source scripts/gpu-env.sh first (or let this script
# do it) so the loader finds the local torch.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=${1:-$here/../target/run-pipeline-cuda}
work=${2:-$(mktemp -d)}
[ -x "$bin" ] || { echo "no executable $bin (make build-cuda)" >&2; exit 1; }
. "$here/gpu-env.sh"

run="$work/run"
echo "== train 12 toy steps on cuda into $run"
"$bin" --device cuda --logdir "$run" --steps 12 --set log_iters=6 --set ema_start_step=6 \
    --set mixed_precision=true --set progress=false
ls -l "$run/plots"

for w in "" "--use-ema"; do
    name=gen${w:+_ema}
    echo "== sample $w (cuda, seed 5) twice"
    "$bin" sample --checkpoint "$run" $w --num-samples 64 --seed 5 --device cuda --out "$work/$name.a"
    "$bin" sample --checkpoint "$run" $w --num-samples 64 --seed 5 --device cuda --out "$work/$name.b" >/dev/null
    if cmp -s "$work/$name.a/samples.safetensors" "$work/$name.b/samples.safetensors"; then
        echo "same seed, same bytes: OK"
    else
        echo "same seed gave different latents on cuda: FAIL" >&2
        exit 1
    fi
done
echo "== outputs in $work"
