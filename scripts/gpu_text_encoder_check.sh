#!/usr/bin/env bash
# GPU check of the umT5-XXL path at full size (random weights: the real file cannot be downloaded
# here): writes a Wan-release-layout folder with a random models_t5_umt5-xxl-enc-bf16.safetensors
# (5.7 B parameters, Wan's names, bf16, by torch alone) and the stand-in tokenizer, then times
# `run-pipeline encode-prompts` on N prompts (batched, bf16 on the GPU), its resumed re-run, and
# one added prompt; samples the GPU's memory use every 0.2 s.
#
#   scripts/gpu_text_encoder_check.sh [BIN]      (N=2000 prompts by default; OUT=dir for logs)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/gpu-check-lib.sh"
find_cuda_bin "${1:-}"
gpu_env cuda 1
work=$(mktemp -d)
mkdir -p "$work/wan/google/umt5-xxl"
cp "$root/tests/fixtures/umt5/tokenizer/tokenizer.json" "$work/wan/google/umt5-xxl/"
python3 - "$work/wan/models_t5_umt5-xxl-enc-bf16.safetensors" <<'PY'
import sys, time, torch
sys.path.insert(0, "scripts")
from import_self_forcing import write_safetensors
t0 = time.time(); g = torch.Generator("cuda").manual_seed(0)
def r(*s, std=0.02): return (torch.randn(*s, generator=g, device="cuda") * std).to(torch.bfloat16).cpu()
d, h, dk, ff, L = 4096, 64, 64, 10240, 24
sd = {"token_embedding.weight": r(256384, d, std=1.0), "norm.weight": torch.ones(d, dtype=torch.bfloat16)}
for i in range(L):
    p = f"blocks.{i}."
    sd.update({p + "norm1.weight": torch.ones(d, dtype=torch.bfloat16), p + "norm2.weight": torch.ones(d, dtype=torch.bfloat16),
               p + "attn.q.weight": r(h * dk, d, std=0.005), p + "attn.k.weight": r(h * dk, d), p + "attn.v.weight": r(h * dk, d),
               p + "attn.o.weight": r(d, h * dk), p + "pos_embedding.embedding.weight": r(32, h, std=0.1),
               p + "ffn.gate.0.weight": r(ff, d), p + "ffn.fc1.weight": r(ff, d), p + "ffn.fc2.weight": r(d, ff)})
write_safetensors(sys.argv[1], sd)
print(f"random umT5-XXL: {sum(v.numel() for v in sd.values())/1e9:.3f} B params written in {time.time()-t0:.0f} s")
PY
python3 - "$work/p.txt" "${N:-2000}" <<'PY'
import random, sys
random.seed(0)
words = "a red fox runs through deep snow at dawn while the camera slowly pans across a frozen lake city lights reflect".split()
with open(sys.argv[1], "w") as f:
    for i in range(int(sys.argv[2])):
        f.write(" ".join(random.choice(words) for _ in range(random.randint(5, 120))) + f" #{i}\n")
PY
( while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; sleep 0.2; done ) > "$work/mem.txt" &
mon=$!
for run in first resumed; do
    s=$(date +%s.%N)
    "$bin" encode-prompts --prompts "$work/p.txt" --text-encoder "$work/wan" --out "$work/emb.safetensors" --batch-size 32 --set progress=false
    echo "$run: $(python3 -c "print(f'{$(date +%s.%N)-$s:.1f}')") s"
done
echo "one more prompt" >> "$work/p.txt"
s=$(date +%s.%N)
"$bin" encode-prompts --prompts "$work/p.txt" --text-encoder "$work/wan" --out "$work/emb.safetensors" --batch-size 32 --set progress=false
echo "added one: $(python3 -c "print(f'{$(date +%s.%N)-$s:.1f}')") s"
kill $mon
echo "peak GPU memory used: $(sort -n "$work/mem.txt" | tail -1) MiB"
ls -l "$work/emb.safetensors"; du -sh "$work/emb.safetensors.cache"
