#!/usr/bin/env python3
"""Convert the PyTorch pickles of a Wan2.1 release folder to safetensors, in place.

A Wan2.1 release folder (huggingface-cli download Wan-AI/Wan2.1-T2V-1.3B --local-dir DIR) holds
  config.json + diffusion_pytorch_model*.safetensors   the DiT (already safetensors)
  models_t5_umt5-xxl-enc-bf16.pth                       the umT5-XXL encoder (Wan's key names)
  Wan2.1_VAE.pth                                        the VAE (Wan's key names)
  google/umt5-xxl/tokenizer.json                        the tokenizer
stillflow reads safetensors only (no pickle code runs in the trainer), so this writes
  models_t5_umt5-xxl-enc-bf16.safetensors and Wan2.1_VAE.safetensors
beside the .pth files, with the SAME key names and dtypes (--dtype casts floating tensors).
Each file is written to a temporary name, fsynced and renamed; an existing output is kept unless
--force. Loading uses torch.load(weights_only=True): a plain state dict, no code executed.

usage: import_wan.py WAN_DIR [--dtype keep|float32|bfloat16|float16] [--force]
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from import_self_forcing import ConvertError, torch_load, write_safetensors  # noqa: E402  (one loader, one writer)

FILES = (
    ("models_t5_umt5-xxl-enc-bf16.pth", "text encoder (umT5-XXL)"),
    ("Wan2.1_VAE.pth", "VAE"),
)
TOKENIZER = os.path.join("google", "umt5-xxl", "tokenizer.json")


def load_state_dict(path):
    sd = torch_load(path)
    # Some re-saves wrap the state dict; Wan's own files are plain dicts of tensors.
    for wrapper in ("state_dict", "model"):
        if isinstance(sd, dict) and wrapper in sd and isinstance(sd[wrapper], dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict) or not sd:
        raise ConvertError(f"{path}: expected a non-empty state dict, got {type(sd).__name__}")
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise ConvertError(f"{path}: entry `{k}` is a {type(v).__name__}, not a tensor")
    return sd


def convert(src, dst, dtype):
    sd = load_state_dict(src)
    if dtype is not None:
        sd = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items()}
    write_safetensors(dst, sd, {"source": os.path.basename(src), "format": "pt"})
    return len(sd)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("wan_dir")
    ap.add_argument("--dtype", default="keep", choices=["keep", "float32", "bfloat16", "float16"])
    ap.add_argument("--force", action="store_true", help="overwrite existing .safetensors")
    args = ap.parse_args(argv)
    dtype = None if args.dtype == "keep" else getattr(torch, args.dtype)
    try:
        if not os.path.isdir(args.wan_dir):
            raise ConvertError(f"{args.wan_dir}: not a folder")
        done = 0
        for name, what in FILES:
            src = os.path.join(args.wan_dir, name)
            dst = src[: -len(".pth")] + ".safetensors"
            if os.path.exists(dst) and not args.force:
                print(f"{dst}: exists, kept (--force rewrites it)")
                done += 1
                continue
            if not os.path.isfile(src):
                print(f"note: no {name} ({what}) in {args.wan_dir}")
                continue
            n = convert(src, dst, dtype)
            print(f"{dst}: {n} tensors ({what})")
            done += 1
        if done == 0:
            raise ConvertError(
                f"{args.wan_dir}: neither {FILES[0][0]} nor {FILES[1][0]} found: is this a Wan2.1 "
                "release folder (huggingface-cli download Wan-AI/Wan2.1-T2V-1.3B --local-dir DIR)?")
        tok = os.path.join(args.wan_dir, TOKENIZER)
        if not os.path.isfile(tok):
            print(f"note: no {TOKENIZER} in {args.wan_dir}: the text encoder needs it")
    except ConvertError as e:
        print(f"import_wan: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
