#!/usr/bin/env python3
"""Tiny stand-ins of the Wan2.1 release files, in the two real layouts, for the end-to-end tests
(prompts → text encoder → training → sampling → MP4) that run without network access.

Usage:  .venv/bin/python scripts/make_release_fixtures.py      (diffusers, transformers in the venv)

Writes tests/fixtures/release_tiny/
  wan/         Wan's release layout, as `huggingface-cli download Wan-AI/Wan2.1-T2V-1.3B` gives it:
               config.json, diffusion_pytorch_model.safetensors (Wan's names),
               models_t5_umt5-xxl-enc-bf16.pth and Wan2.1_VAE.pth (plain state dicts, Wan's names,
               bf16 like the release), google/umt5-xxl/tokenizer.json
  diffusers/   diffusers' layout (Wan-AI/Wan2.1-T2V-1.3B-Diffusers): model_index.json,
               transformer/, text_encoder/, tokenizer/, vae/ saved by diffusers/transformers
               themselves (save_pretrained), the same weights as wan/.
Sizes: DiT dim 32 (2 heads, 2 layers, in/out 16, text_dim 32, text_len 512), umT5 d_model 32
(4 heads × 8, 2 layers, d_ff 48, 32 buckets, max_distance 128 as Wan's), VAE Wan2.1's layout at
base_dim 4 (z_dim 16). The tokenizer is tests/fixtures/umt5/tokenizer/tokenizer.json (trained on
the fly by scripts/make_umt5_fixture.py).

Every Wan-name table used here is checked against the library's own converter (diffusers'
convert_wan_transformer_to_diffusers / convert_wan_vae_to_diffusers) before anything is written.
"""
import json
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
OUT = os.path.join(ROOT, "tests", "fixtures", "release_tiny")
TOKENIZER = os.environ.get("UMT5_TOKENIZER") or os.path.join(ROOT, "tests", "fixtures", "umt5", "tokenizer", "tokenizer.json")

DIT = dict(dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_dim=16, out_dim=16, text_dim=32,
           text_len=512, freq_dim=32, eps=1e-6, patch_size=[1, 2, 2])
T5 = dict(d_model=32, d_kv=8, num_heads=4, num_layers=2, d_ff=48,
          relative_attention_num_buckets=32, relative_attention_max_distance=128)
VAE_BASE_DIM = 4
# Wan2.1's latent statistics (WanVAE / diffusers' AutoencoderKLWan defaults).
LATENTS_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]
LATENTS_STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
               3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160]

# transformers UMT5 → Wan's t5.py names (the table of src/models/umt5/keys.rs).
T5_BLOCK = {
    "layer.0.layer_norm.weight": "norm1.weight",
    "layer.0.SelfAttention.q.weight": "attn.q.weight",
    "layer.0.SelfAttention.k.weight": "attn.k.weight",
    "layer.0.SelfAttention.v.weight": "attn.v.weight",
    "layer.0.SelfAttention.o.weight": "attn.o.weight",
    "layer.0.SelfAttention.relative_attention_bias.weight": "pos_embedding.embedding.weight",
    "layer.1.layer_norm.weight": "norm2.weight",
    "layer.1.DenseReluDense.wi_0.weight": "ffn.gate.0.weight",
    "layer.1.DenseReluDense.wi_1.weight": "ffn.fc1.weight",
    "layer.1.DenseReluDense.wo.weight": "ffn.fc2.weight",
}


def t5_wan_name(k):
    if k == "shared.weight":
        return "token_embedding.weight"
    if k == "encoder.final_layer_norm.weight":
        return "norm.weight"
    if k == "encoder.embed_tokens.weight":
        return None  # tied to shared.weight
    p = k.split(".")
    assert p[0] == "encoder" and p[1] == "block", k
    return f"blocks.{p[2]}.{T5_BLOCK['.'.join(p[3:])]}"


def main():
    import torch
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from diffusers.loaders.single_file_utils import (
        convert_wan_transformer_to_diffusers, convert_wan_vae_to_diffusers)
    from transformers import UMT5Config, UMT5EncoderModel
    from make_wan_fixture import wan_to_diffusers_name
    from make_vae_fixture import diffusers_to_wan_name

    torch.manual_seed(20261204)
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    wan_dir, dif_dir = os.path.join(OUT, "wan"), os.path.join(OUT, "diffusers")
    os.makedirs(os.path.join(wan_dir, "google", "umt5-xxl"))
    os.makedirs(os.path.join(dif_dir, "tokenizer"))

    # ---- DiT -----------------------------------------------------------------------------
    dit = WanTransformer3DModel(
        patch_size=tuple(DIT["patch_size"]), num_attention_heads=DIT["num_heads"],
        attention_head_dim=DIT["dim"] // DIT["num_heads"], in_channels=DIT["in_dim"],
        out_channels=DIT["out_dim"], text_dim=DIT["text_dim"], freq_dim=DIT["freq_dim"],
        ffn_dim=DIT["ffn_dim"], num_layers=DIT["num_layers"], cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=DIT["eps"]).eval()
    with torch.no_grad():
        for p in dit.parameters():  # every path matters: no all-zero or all-one tensor
            p.copy_(torch.randn_like(p) * 0.2)
    dsd = {k: v.detach().clone() for k, v in dit.state_dict().items()}
    wan_keys = {}
    for k in dsd:
        for cand in candidates_wan_dit(k):
            if wan_to_diffusers_name(cand) == k:
                wan_keys[k] = cand
                break
        else:
            raise SystemExit(f"no Wan name for DiT key {k}")
    wsd = {wan_keys[k]: v for k, v in dsd.items()}
    back = convert_wan_transformer_to_diffusers({k: v.clone() for k, v in wsd.items()})
    assert set(back) == set(dsd) and all(torch.equal(back[k], dsd[k]) for k in dsd), "DiT names"
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in wsd.items()},
              os.path.join(wan_dir, "diffusion_pytorch_model.safetensors"))
    with open(os.path.join(wan_dir, "config.json"), "w") as f:
        json.dump(dict(DIT, model_type="t2v", _class_name="WanModel", qk_norm=True,
                       cross_attn_norm=True, window_size=[-1, -1]), f, indent=2)
    dit.save_pretrained(os.path.join(dif_dir, "transformer"))

    # ---- umT5 encoder + tokenizer --------------------------------------------------------
    with open(TOKENIZER) as f:
        vocab = len(json.load(f)["model"]["vocab"])
    t5 = UMT5EncoderModel(UMT5Config(vocab_size=vocab, feed_forward_proj="gated-gelu",
                                     dropout_rate=0.0, is_encoder_decoder=False, **T5)).eval()
    with torch.no_grad():
        for p in t5.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    hsd = t5.state_dict()
    t5_wan = {}
    for k, v in hsd.items():
        n = t5_wan_name(k)
        if n is not None:
            t5_wan[n] = v.detach().clone().to(torch.bfloat16)
    torch.save(t5_wan, os.path.join(wan_dir, "models_t5_umt5-xxl-enc-bf16.pth"))
    t5.save_pretrained(os.path.join(dif_dir, "text_encoder"))
    for d in (os.path.join(wan_dir, "google", "umt5-xxl"), os.path.join(dif_dir, "tokenizer")):
        shutil.copy(TOKENIZER, os.path.join(d, "tokenizer.json"))

    # ---- VAE ------------------------------------------------------------------------------
    vae = AutoencoderKLWan(base_dim=VAE_BASE_DIM, z_dim=16, dim_mult=[1, 2, 4, 4],
                           num_res_blocks=2, attn_scales=[],
                           temperal_downsample=[False, True, True], dropout=0.0,
                           latents_mean=LATENTS_MEAN, latents_std=LATENTS_STD).eval()
    with torch.no_grad():
        for n, p in vae.named_parameters():
            p.copy_(torch.randn_like(p) * (0.2 if p.dim() > 1 else 0.05) + (1.0 if "gamma" in n else 0.0))
    vsd = {k: v.detach().clone() for k, v in vae.state_dict().items()}
    vwan = {diffusers_to_wan_name(k, 2): v for k, v in vsd.items()}
    back = convert_wan_vae_to_diffusers({k: v.clone() for k, v in vwan.items()})
    assert set(back) == set(vsd) and all(torch.equal(back[k], vsd[k]) for k in vsd), "VAE names"
    torch.save({k: v.to(torch.bfloat16) for k, v in vwan.items()},
               os.path.join(wan_dir, "Wan2.1_VAE.pth"))
    # The diffusers layout gets the same (bf16-rounded) values, so both layouts hold one model.
    with torch.no_grad():
        for p in vae.parameters():
            p.copy_(p.to(torch.bfloat16).to(torch.float32))
        for p in t5.parameters():
            p.copy_(p.to(torch.bfloat16).to(torch.float32))
    vae.save_pretrained(os.path.join(dif_dir, "vae"))
    t5.save_pretrained(os.path.join(dif_dir, "text_encoder"))
    with open(os.path.join(dif_dir, "model_index.json"), "w") as f:
        json.dump({"_class_name": "WanPipeline", "text_encoder": ["transformers", "UMT5EncoderModel"],
                   "tokenizer": ["transformers", "T5TokenizerFast"],
                   "transformer": ["diffusers", "WanTransformer3DModel"],
                   "vae": ["diffusers", "AutoencoderKLWan"]}, f, indent=2)
    total = 0
    for d, _, fs in os.walk(OUT):
        for n in fs:
            total += os.path.getsize(os.path.join(d, n))
    print(f"wrote {OUT} ({total / 1e6:.2f} MB)")


def candidates_wan_dit(k):
    """Wan names a diffusers DiT key may come from (checked with wan_to_diffusers_name)."""
    p = k.split(".")
    if p[0] != "blocks":
        return ["time_embedding.0." + p[-1], "time_embedding.2." + p[-1], "text_embedding.0." + p[-1],
                "text_embedding.2." + p[-1], "time_projection.1." + p[-1], "head.head." + p[-1],
                "head.modulation", k]
    i, rest = p[1], p[2:]
    out = [f"blocks.{i}.modulation", f"blocks.{i}.norm3.{rest[-1]}",
           f"blocks.{i}.ffn.0.{rest[-1]}", f"blocks.{i}.ffn.2.{rest[-1]}"]
    for a in ("self_attn", "cross_attn"):
        for lin in ("q", "k", "v", "o", "norm_q", "norm_k"):
            out.append(f"blocks.{i}.{a}.{lin}.{rest[-1]}")
    return out


if __name__ == "__main__":
    main()
