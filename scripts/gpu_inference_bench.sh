#!/usr/bin/env bash
# Inference speed of the block-causal 1.3B generator on one GPU (README "Inference speed"):
# `run-pipeline sample --benchmark`, Self-Forcing's inference shape (4 warped steps, blocks of 3
# latent frames, 21 frames = 81 video frames at 480×832, batch 1, bf16), RANDOM weights (speed
# does not depend on them), with and without the streaming VAE decode. Then a GPU check of the
# real path on the tiny release stand-ins: import, encode-prompts, sample to MP4 on cuda (bf16
# text encoder, DiT and VAE).
#
#   scripts/gpu_inference_bench.sh [BIN]      (BIN: a `make build-cuda` binary; OUT=dir for logs)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/gpu-check-lib.sh"
find_cuda_bin "${1:-}"
gpu_env cuda 1
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"

echo "== sample --benchmark (1.3B, random weights, VAE random:wan2.1)"
"$bin" sample --benchmark --config "$root/configs/bench_wan1.3b_dmd.yaml" --device cuda \
    --set vae_path=random:wan2.1 --runs "${RUNS:-5}" | tee "$out/inference_bench.md"

echo "== real path on the tiny stand-ins, on cuda"
work=$(mktemp -d)
cp -r "$root/tests/fixtures/release_tiny/wan" "$work/wan"
python3 "$root/scripts/import_wan.py" "$work/wan"
printf 'a red fox runs through snow\nthe sea at dawn\n' > "$work/p.txt"
"$bin" encode-prompts --prompts "$work/p.txt" --text-encoder "$work/wan" --out "$work/emb.safetensors"
sets=(--set generator_name="$work/wan" --set text_encoder_path="$work/wan" --set vae_path="$work/wan"
      --set "image_or_video_shape=[1,3,16,4,4]" --set num_training_frames=3 --set num_frame_per_block=1)
"$bin" sample --device cuda --prompts "$work/p.txt" --num-samples 2 --out "$work/v" "${sets[@]}"
python3 -c 'import av' 2>/dev/null && for f in "$work"/v/*.mp4; do python3 "$root/scripts/decode_video.py" "$f"; done || ls -l "$work/v"
