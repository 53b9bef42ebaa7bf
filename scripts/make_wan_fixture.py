#!/usr/bin/env python3
"""Build the Wan2.1 parity fixture from diffusers' WanTransformer3DModel (an implementation nobody
on stillflow wrote).

Usage:  STILLFLOW_VENV=/work/main/.venv python scripts/make_wan_fixture.py [--no-install]
        (or run it with the venv's python directly; PYTHON=/path/to/python overrides both)

It installs pinned diffusers (and what it needs) into the venv whose python runs it, builds a tiny
WanTransformer3DModel with seeded random weights, runs it on small inputs and writes
  tests/fixtures/wan_tiny.safetensors  weights under Wan's ORIGINAL key names + io.* tensors
  tests/fixtures/wan_tiny.json         the config in Wan's config.json format
The Wan<->diffusers key mapping is checked against diffusers' own converter
(convert_wan_transformer_to_diffusers) so the names cannot drift silently.
"""
import json
import os
import subprocess
import sys

PINS = ["diffusers==0.42.1", "safetensors==0.8.0", "numpy==2.4.6"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reexec_in_venv():
    py = os.environ.get("PYTHON")
    if not py and os.environ.get("STILLFLOW_VENV"):
        py = os.path.join(os.environ["STILLFLOW_VENV"], "bin", "python")
    # Compare interpreters by path, not realpath: a venv's python is a symlink to the system one.
    if py and os.path.abspath(py) != os.path.abspath(sys.executable) and not os.environ.get("_WAN_FIXTURE_CHILD"):
        env = dict(os.environ, _WAN_FIXTURE_CHILD="1")
        sys.exit(subprocess.call([py, os.path.abspath(__file__)] + sys.argv[1:], env=env))


def ensure_deps():
    if "--no-install" in sys.argv:
        return
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q"] + PINS)


# Tiny config: head_dim 20 makes Wan's RoPE split uneven (t 8, h 6, w 6); F,H,W all different.
CFG = dict(dim=40, ffn_dim=64, num_heads=2, num_layers=2, in_dim=4, out_dim=4, text_dim=16,
           text_len=8, freq_dim=32, eps=1e-6, patch_size=[1, 2, 2])
B, F, H, W = 2, 3, 4, 6


def wan_to_diffusers_name(k):
    """Our own reverse-of-converter table (Wan original -> diffusers), checked below."""
    top = {
        "time_embedding.0": "condition_embedder.time_embedder.linear_1",
        "time_embedding.2": "condition_embedder.time_embedder.linear_2",
        "text_embedding.0": "condition_embedder.text_embedder.linear_1",
        "text_embedding.2": "condition_embedder.text_embedder.linear_2",
        "time_projection.1": "condition_embedder.time_proj",
        "head.head": "proj_out",
    }
    for a, b in top.items():
        if k.startswith(a + "."):
            return b + k[len(a):]
    if k == "head.modulation":
        return "scale_shift_table"
    parts = k.split(".")
    if parts[0] == "blocks":
        rest = ".".join(parts[2:])
        sub = {"self_attn": "attn1", "cross_attn": "attn2"}
        lin = {"q": "to_q", "k": "to_k", "v": "to_v", "o": "to_out.0", "norm_q": "norm_q", "norm_k": "norm_k"}
        p = rest.split(".")
        if p[0] in sub:
            rest = sub[p[0]] + "." + lin[p[1]] + "." + p[2]
        elif p[0] == "norm3":  # Wan's affine cross-attn LN is diffusers' norm2
            rest = "norm2." + p[1]
        elif p[0] == "ffn":
            rest = {"0": "ffn.net.0.proj", "2": "ffn.net.2"}[p[1]] + "." + p[2]
        elif p[0] == "modulation":
            rest = "scale_shift_table"
        return f"blocks.{parts[1]}.{rest}"
    return k  # patch_embedding.*


def main():
    reexec_in_venv()
    ensure_deps()
    import torch
    from safetensors.torch import save_file
    from diffusers import WanTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    torch.manual_seed(20250101)
    c = CFG
    model = WanTransformer3DModel(
        patch_size=tuple(c["patch_size"]), num_attention_heads=c["num_heads"],
        attention_head_dim=c["dim"] // c["num_heads"], in_channels=c["in_dim"], out_channels=c["out_dim"],
        text_dim=c["text_dim"], freq_dim=c["freq_dim"], ffn_dim=c["ffn_dim"], num_layers=c["num_layers"],
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=c["eps"]).float().eval()
    # Re-randomise every parameter so that every path (norm weights, LN3 bias, modulation tables,
    # biases) carries signal: a parity test over default ones/zeros would not notice a missing term.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm_q.weight") or name.endswith("norm_k.weight") or name.endswith("norm2.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif "scale_shift_table" in name:
                p.copy_(0.3 * torch.randn_like(p))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn_like(p))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn_like(p) / fan_in ** 0.5)

    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    # Build Wan-named dict: for each diffusers key find the Wan key whose mapping produces it.
    wan_keys = guess_wan_keys(c)
    wan_sd = {}
    for wk in wan_keys:
        dk = wan_to_diffusers_name(wk)
        assert dk in sd, f"no diffusers key {dk} for {wk}"
        wan_sd[wk] = sd[dk]
    assert len(wan_sd) == len(sd), f"diffusers has keys we do not map: {set(sd) - {wan_to_diffusers_name(k) for k in wan_sd}}"
    # Independent check with diffusers' own converter (Wan original -> diffusers).
    conv = convert_wan_transformer_to_diffusers({k: v.clone() for k, v in wan_sd.items()})
    assert set(conv) == set(sd), (set(conv) ^ set(sd))
    for k in sd:
        assert torch.equal(conv[k], sd[k]), k

    x = torch.randn(B, c["in_dim"], F, H, W)
    t = torch.tensor([937.5, 250.0])
    ctx = torch.randn(B, c["text_len"], c["text_dim"])
    with torch.no_grad():
        out = model(x, t, ctx, return_dict=False)[0]
        # Per-frame timesteps, expanded per token (diffusers' Wan2.2 path): the block-causal
        # generator's modulation.
        t_frame = torch.tensor([[999.0, 500.0, 20.0], [0.0, 333.3, 750.0]])
        tokens_per_frame = (H // 2) * (W // 2)
        t_tok = t_frame.repeat_interleave(tokens_per_frame, dim=1)
        out_frame = model(x, t_tok, ctx, return_dict=False)[0]

    tensors = dict(wan_sd)
    # io tensors in stillflow's [B, F, C, H, W] layout.
    tensors["io.x"] = x.permute(0, 2, 1, 3, 4).contiguous()
    tensors["io.t"] = t[:, None].expand(B, F).contiguous()
    tensors["io.context"] = ctx.contiguous()
    tensors["io.out"] = out.permute(0, 2, 1, 3, 4).contiguous()
    tensors["io.t_frame"] = t_frame.contiguous()
    tensors["io.out_frame"] = out_frame.permute(0, 2, 1, 3, 4).contiguous()
    fx = os.path.join(ROOT, "tests", "fixtures")
    os.makedirs(fx, exist_ok=True)
    save_file(tensors, os.path.join(fx, "wan_tiny.safetensors"))
    cfg = dict(_class_name="WanModel", model_type="t2v", **c)
    cfg["_generated_by"] = "scripts/make_wan_fixture.py with " + ", ".join(PINS) + f", torch {torch.__version__}"
    with open(os.path.join(fx, "wan_tiny.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    print("wrote", len(wan_sd), "weights; |out| =", out.abs().mean().item(), "|out_frame| =", out_frame.abs().mean().item())


def guess_wan_keys(c):
    keys = ["patch_embedding.weight", "patch_embedding.bias"]
    for m in ["text_embedding.0", "text_embedding.2", "time_embedding.0", "time_embedding.2", "time_projection.1", "head.head"]:
        keys += [m + ".weight", m + ".bias"]
    keys.append("head.modulation")
    for i in range(c["num_layers"]):
        p = f"blocks.{i}."
        for a in ["self_attn", "cross_attn"]:
            for l in ["q", "k", "v", "o"]:
                keys += [p + f"{a}.{l}.weight", p + f"{a}.{l}.bias"]
            keys += [p + f"{a}.norm_q.weight", p + f"{a}.norm_k.weight"]
        keys += [p + "norm3.weight", p + "norm3.bias", p + "ffn.0.weight", p + "ffn.0.bias",
                 p + "ffn.2.weight", p + "ffn.2.bias", p + "modulation"]
    return keys


if __name__ == "__main__":
    main()
