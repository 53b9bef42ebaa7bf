#!/usr/bin/env python3
"""Convert a Self-Forcing checkpoint (model.pt) to stillflow's safetensors layout.

Self-Forcing saves `logdir/checkpoint_model_NNNNNN/model.pt` =
{"generator": state_dict, "critic": state_dict, "generator_ema": state_dict} (the last only after
ema_start_step). This writes OUT/generator.safetensors, OUT/critic.safetensors and
OUT/generator_ema.safetensors with the key names stillflow's Wan loader uses (Wan's original names):

  * wrapper fragments are removed wherever they occur: `_fsdp_wrapped_module.`,
    `_checkpoint_wrapped_module.`, `_orig_mod.` (FSDP, activation checkpointing, torch.compile; the
    reference's EMA keys carry FSDP fragments, spec quirk (d));
  * then the leading `model.` of WanDiffusionWrapper is removed (`--keep-model-prefix` keeps it),
    so `model.blocks.0.self_attn.q.weight` becomes `blocks.0.self_attn.q.weight`.

Two source keys that map to the same name are an error. Tensors keep their dtype unless --dtype is
given. The safetensors writer is written out here (8-byte little-endian header length, JSON header,
raw little-endian data) so that only torch is needed. Files are written to a temporary name, fsynced
and renamed.

usage: import_self_forcing.py MODEL_PT OUT_DIR [--parts generator,critic,generator_ema]
                              [--dtype keep|float32|bfloat16|float16] [--keep-model-prefix]
"""
import argparse
import ctypes
import json
import os
import struct
import sys

import torch

FRAGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}
PARTS = ("generator", "critic", "generator_ema")


class ConvertError(Exception):
    pass


def clean_key(key, keep_model_prefix=False):
    for frag in FRAGMENTS:
        key = key.replace(frag, "")
    if not keep_model_prefix and key.startswith("model."):
        key = key[len("model."):]
    return key


def convert_state_dict(sd, part, keep_model_prefix=False, dtype=None):
    out = {}
    origin = {}
    for key, t in sd.items():
        if not isinstance(t, torch.Tensor):
            raise ConvertError(f"{part}: entry `{key}` is a {type(t).__name__}, not a tensor")
        name = clean_key(key, keep_model_prefix)
        if not name:
            raise ConvertError(f"{part}: key `{key}` is empty after stripping prefixes")
        if name in out:
            raise ConvertError(
                f"{part}: keys `{origin[name]}` and `{key}` both map to `{name}`")
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        out[name] = t
        origin[name] = key
    return out


def torch_load(path):
    """torch.load on the CPU with weights_only=True (tensors and containers; no code runs), its
    failures as one ConvertError naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConvertError(f"{path}: no such file")
    except Exception as e:  # torch raises many kinds for a bad file
        first = (str(e).strip().splitlines() or [""])[0]
        raise ConvertError(f"{path}: cannot load ({type(e).__name__}: {first})")


def tensor_bytes(t):
    t = t.detach().to("cpu").contiguous()
    if t.dtype not in DTYPES:
        raise ConvertError(f"unsupported dtype {t.dtype}")
    n = t.numel() * t.element_size()
    if n == 0:
        return b""
    # Raw memory of a contiguous CPU tensor (no numpy needed); x86/ARM hosts are little-endian.
    return ctypes.string_at(t.data_ptr(), n)


def write_safetensors(path, tensors, metadata=None):
    """tensors: dict name -> torch.Tensor. Writes path atomically (tmp + fsync + rename)."""
    if sys.byteorder != "little":
        raise ConvertError("big-endian hosts are not supported")
    names = sorted(tensors)
    header = {}
    blobs = []
    offset = 0
    for name in names:
        t = tensors[name]
        if t.dtype not in DTYPES:
            raise ConvertError(f"`{name}`: unsupported dtype {t.dtype}")
        b = tensor_bytes(t)
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)  # align the data section to 8 bytes
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_pt")
    ap.add_argument("out_dir")
    ap.add_argument("--parts", default=",".join(PARTS),
                    help="comma-separated parts to convert (missing optional ones are skipped)")
    ap.add_argument("--dtype", default="keep", choices=["keep", "float32", "bfloat16", "float16"])
    ap.add_argument("--keep-model-prefix", action="store_true")
    args = ap.parse_args(argv)
    dtype = None if args.dtype == "keep" else getattr(torch, args.dtype)
    try:
        ckpt = torch_load(args.model_pt)
        if not isinstance(ckpt, dict):
            raise ConvertError(f"{args.model_pt}: expected a dict, got {type(ckpt).__name__}")
        wanted = [p.strip() for p in args.parts.split(",") if p.strip()]
        for p in wanted:
            if p not in PARTS:
                raise ConvertError(f"--parts: unknown part `{p}` (known: {', '.join(PARTS)})")
        present = [p for p in wanted if p in ckpt]
        if not present:
            raise ConvertError(
                f"{args.model_pt}: none of {wanted} found (keys: {sorted(ckpt)[:10]})")
        os.makedirs(args.out_dir, exist_ok=True)
        for p in present:
            sd = convert_state_dict(ckpt[p], p, args.keep_model_prefix, dtype)
            path = os.path.join(args.out_dir, f"{p}.safetensors")
            write_safetensors(path, sd, {"source": os.path.basename(args.model_pt), "part": p})
            print(f"{path}: {len(sd)} tensors")
        for p in wanted:
            if p not in ckpt:
                print(f"note: {args.model_pt} has no `{p}` (EMA is saved only after ema_start_step)")
    except ConvertError as e:
        print(f"import_self_forcing: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
