#!/usr/bin/env python3
"""Build the Wan2.1 VAE parity fixture from diffusers' AutoencoderKLWan (an implementation nobody on
stillflow wrote).

Usage:  STILLFLOW_VENV=/work/main/.venv python scripts/make_vae_fixture.py [--no-install]
        (or run it with the venv's python directly; PYTHON=/path/to/python overrides both)

It builds an AutoencoderKLWan with Wan2.1's structure (dim_mult [1,2,4,4], 2 residual blocks per
level, temporal downsampling [False, True, True], z_dim 16 so the real latent mean/std apply) but a
tiny base_dim, re-randomises every parameter with a fixed seed, and writes under
tests/fixtures/vae/:
  diffusers/config.json + diffusers/diffusion_pytorch_model.safetensors   a diffusers `vae/` folder
  wan_names.json         diffusers name -> Wan's ORIGINAL name (Wan2.1_VAE.pth's names) for every
                         weight, so the test can write the same weights in Wan's format
  io.safetensors         video -> normalised latents (encode: posterior mode, then (mu - mean) / std
                         as Wan's WanVAE and diffusers' pipelines do), and normalised latents ->
                         video (decode: z * std + mean, then the VAE decoder, clamped to [-1, 1])
The Wan<->diffusers name table below is our own; it is checked against diffusers' own converter
(convert_wan_vae_to_diffusers, the same table as scripts/convert_wan_to_diffusers.py) so the names
cannot drift silently.
"""
import json
import os
import subprocess
import sys

PINS = ["diffusers==0.42.1", "safetensors==0.8.0", "numpy==2.4.6"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "vae")

BASE_DIM = 4
NUM_RES_BLOCKS = 2
DIM_MULT = [1, 2, 4, 4]


def reexec_in_venv():
    py = os.environ.get("PYTHON")
    if not py and os.environ.get("STILLFLOW_VENV"):
        py = os.path.join(os.environ["STILLFLOW_VENV"], "bin", "python")
    # Compare interpreters by path, not realpath: a venv's python is a symlink to the system one.
    if py and os.path.abspath(py) != os.path.abspath(sys.executable) and not os.environ.get("_VAE_FIXTURE_CHILD"):
        env = dict(os.environ, _VAE_FIXTURE_CHILD="1")
        sys.exit(subprocess.call([py, os.path.abspath(__file__)] + sys.argv[1:], env=env))


def ensure_deps():
    if "--no-install" in sys.argv:
        return
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q"] + PINS)


def diffusers_to_wan_name(k, nrb):
    """Our own table (diffusers -> Wan original), valid for any dim_mult / num_res_blocks."""
    top = {"quant_conv.": "conv1.", "post_quant_conv.": "conv2."}
    for a, b in top.items():
        if k.startswith(a):
            return b + k[len(a):]
    side, rest = k.split(".", 1)
    assert side in ("encoder", "decoder"), k

    def resnet(r):
        for a, b in [("norm1.", "residual.0."), ("conv1.", "residual.2."), ("norm2.", "residual.3."),
                     ("conv2.", "residual.6."), ("conv_shortcut.", "shortcut.")]:
            if r.startswith(a):
                return b + r[len(a):]
        raise AssertionError(r)

    p = rest.split(".")
    if p[0] == "conv_in":
        out = "conv1." + ".".join(p[1:])
    elif p[0] == "norm_out":
        out = "head.0." + ".".join(p[1:])
    elif p[0] == "conv_out":
        out = "head.2." + ".".join(p[1:])
    elif p[0] == "mid_block":
        j = int(p[2])
        if p[1] == "resnets":
            out = f"middle.{2 * j}." + resnet(".".join(p[3:]))
        else:
            assert p[1] == "attentions" and j == 0, k
            out = "middle.1." + ".".join(p[3:])
    elif p[0] == "down_blocks":
        # The encoder's flat list has the same order in both (residual blocks, then resample).
        r = ".".join(p[2:])
        inner = r if r.startswith(("resample.", "time_conv.")) else resnet(r)
        out = f"downsamples.{p[1]}." + inner
    elif p[0] == "up_blocks":
        # Wan's flat decoder list: per level nrb+1 residual blocks, then one resample.
        i = int(p[1])
        if p[2] == "resnets":
            out = f"upsamples.{i * (nrb + 2) + int(p[3])}." + resnet(".".join(p[4:]))
        else:
            assert p[2] == "upsamplers" and p[3] == "0", k
            out = f"upsamples.{i * (nrb + 2) + nrb + 1}." + ".".join(p[4:])
    else:
        raise AssertionError(k)
    return side + "." + out


def main():
    reexec_in_venv()
    ensure_deps()
    import torch
    from safetensors.torch import save_file
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    torch.manual_seed(20250214)
    vae = AutoencoderKLWan(base_dim=BASE_DIM, z_dim=16, dim_mult=DIM_MULT, num_res_blocks=NUM_RES_BLOCKS,
                           attn_scales=[], temperal_downsample=[False, True, True]).float().eval()
    # Re-randomise every parameter so that every path carries signal (RMS gammas are ones and
    # biases zeros by default: a parity test over them would not notice a missing term).
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn_like(p))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn_like(p) / fan_in ** 0.5)
        # Keep most decoded pixels inside [-1, 1] so the final clamp does not hide differences.
        vae.decoder.conv_out.weight.mul_(0.5)

    sd = {k: v.detach().clone().contiguous() for k, v in vae.state_dict().items()}
    wan_sd = {diffusers_to_wan_name(k, NUM_RES_BLOCKS): v for k, v in sd.items()}
    assert len(wan_sd) == len(sd)
    # Independent check with diffusers' own converter (Wan original -> diffusers); it hard-codes
    # Wan2.1's layout, which this fixture keeps (only the widths are small).
    conv = convert_wan_vae_to_diffusers({k: v.clone() for k, v in wan_sd.items()})
    assert set(conv) == set(sd), set(conv) ^ set(sd)
    for k in sd:
        assert torch.equal(conv[k], sd[k]), k

    cfg = vae.config
    mean = torch.tensor(cfg.latents_mean).view(1, 16, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(cfg.latents_std).view(1, 16, 1, 1, 1)
    video = (torch.rand(1, 3, 9, 16, 24) * 2 - 1)
    # Smooth the video a little over time so the frames are related, like a real clip.
    video = 0.6 * video + 0.4 * video[:, :, :1]
    z_in = torch.randn(2, 16, 4, 2, 3)
    with torch.no_grad():
        mu = vae.encode(video).latent_dist.mode()
        latents = (mu - mean) * inv_std  # Wan's WanVAE.encode and WanVideoToVideoPipeline
        raw = vae.decode(z_in / inv_std + mean).sample  # WanPipeline's decode convention
    assert latents.shape == (1, 16, 3, 2, 3), latents.shape
    assert raw.shape == (2, 3, 13, 16, 24), raw.shape
    clamped = (raw.abs() >= 1.0).float().mean().item()
    print(f"decoded |x| mean {raw.abs().mean().item():.3f}, clamped fraction {clamped:.3f}; "
          f"latents std {latents.std().item():.3f}")
    assert clamped < 0.05, "too many clamped pixels: the parity test would be blind there"

    os.makedirs(os.path.join(OUT, "diffusers"), exist_ok=True)
    save_file(sd, os.path.join(OUT, "diffusers", "diffusion_pytorch_model.safetensors"))
    vae.save_config(os.path.join(OUT, "diffusers"))
    with open(os.path.join(OUT, "wan_names.json"), "w") as f:
        json.dump({k: diffusers_to_wan_name(k, NUM_RES_BLOCKS) for k in sorted(sd)}, f, indent=0)
    io = {"video": video.contiguous(), "latents": latents.contiguous(), "z": z_in.contiguous(),
          "decoded": raw.contiguous()}
    save_file(io, os.path.join(OUT, "io.safetensors"), metadata={
        "generated_by": "scripts/make_vae_fixture.py with " + ", ".join(PINS) + f", torch {torch.__version__}"})
    n = sum(v.numel() for v in sd.values())
    print("wrote", len(sd), "tensors,", n, "parameters to", OUT)


if __name__ == "__main__":
    main()
