//! The explicit Wan ↔ diffusers (`AutoencoderKLWan`) parameter-name table.
//!
//! stillflow keeps Wan's original names (those of `Wan2.1_VAE.pth`). diffusers renames:
//! | Wan                                   | diffusers                                        |
//! |---------------------------------------|--------------------------------------------------|
//! | `conv1.*` / `conv2.*`                 | `quant_conv.*` / `post_quant_conv.*`             |
//! | `{enc,dec}.conv1.*`                   | `{enc,dec}.conv_in.*`                            |
//! | `{enc,dec}.head.0.gamma` / `head.2.*` | `{enc,dec}.norm_out.gamma` / `conv_out.*`        |
//! | `{enc,dec}.middle.0` / `.1` / `.2`    | `mid_block.resnets.0` / `attentions.0` / `resnets.1` |
//! | `encoder.downsamples.N.*`             | `encoder.down_blocks.N.*` (same flat order)      |
//! | `decoder.upsamples.N` (N = i·(R+2)+r) | `decoder.up_blocks.i.resnets.r` (r ≤ R),         |
//! |                                       | `decoder.up_blocks.i.upsamplers.0` (r = R+1)     |
//! | residual `residual.0/2/3/6`, `shortcut` | `norm1`, `conv1`, `norm2`, `conv2`, `conv_shortcut` |
//! where R = num_res_blocks (the decoder has R+1 residual blocks per stage, then an upsampler).
//! Resample internals (`resample.1.*`, `time_conv.*`) and attention internals (`norm.gamma`,
//! `to_qkv.*`, `proj.*`) keep their names. This matches diffusers' `convert_wan_vae_to_diffusers`
//! (and scripts/convert_wan_to_diffusers.py) on Wan2.1's layout; scripts/make_vae_fixture.py checks
//! it against that converter.

use anyhow::{bail, Result};

fn residual(r: &str) -> Option<String> {
    let table = [
        ("residual.0.", "norm1."),
        ("residual.2.", "conv1."),
        ("residual.3.", "norm2."),
        ("residual.6.", "conv2."),
        ("shortcut.", "conv_shortcut."),
    ];
    table
        .iter()
        .find_map(|(w, d)| r.strip_prefix(w).map(|rest| format!("{d}{rest}")))
}

/// The diffusers name of Wan parameter `name` for a VAE with `num_res_blocks` = R.
pub fn wan_to_diffusers(name: &str, num_res_blocks: i64) -> Result<String> {
    let fail = || anyhow::anyhow!("no diffusers name for VAE parameter {name:?}");
    if let Some(r) = name.strip_prefix("conv1.") {
        return Ok(format!("quant_conv.{r}"));
    }
    if let Some(r) = name.strip_prefix("conv2.") {
        return Ok(format!("post_quant_conv.{r}"));
    }
    let (side, rest) = name.split_once('.').ok_or_else(fail)?;
    if side != "encoder" && side != "decoder" {
        bail!(fail());
    }
    let parts: Vec<&str> = rest.splitn(3, '.').collect();
    let inner = match parts.as_slice() {
        ["conv1", r] => format!("conv_in.{r}"),
        ["head", "0", r] => format!("norm_out.{r}"),
        ["head", "2", r] => format!("conv_out.{r}"),
        ["middle", "1", r] => format!("mid_block.attentions.0.{r}"),
        ["middle", j @ ("0" | "2"), r] => {
            let k = if *j == "0" { 0 } else { 1 };
            format!("mid_block.resnets.{k}.{}", residual(r).ok_or_else(fail)?)
        }
        ["downsamples", n, r] if side == "encoder" => {
            let r = if r.starts_with("resample.") || r.starts_with("time_conv.") {
                r.to_string()
            } else {
                residual(r).ok_or_else(fail)?
            };
            format!("down_blocks.{n}.{r}")
        }
        ["upsamples", n, r] if side == "decoder" => {
            let n: i64 = n.parse().map_err(|_| fail())?;
            let per_stage = num_res_blocks + 2;
            let (i, j) = (n / per_stage, n % per_stage);
            if j <= num_res_blocks {
                format!(
                    "up_blocks.{i}.resnets.{j}.{}",
                    residual(r).ok_or_else(fail)?
                )
            } else {
                format!("up_blocks.{i}.upsamplers.0.{r}")
            }
        }
        _ => bail!(fail()),
    };
    Ok(format!("{side}.{inner}"))
}
