//! Prompts and the VAE for `sample`: a prompt list encoded by the umT5 text encoder, a file of
//! precomputed embeddings, or (toy and random-weight generators only) the toy prompt set.

use crate::actors::zoo;
use crate::config::RunConfig;
use crate::models::resolve;
use crate::models::toy_text::ToyTextEncoder;
use crate::models::umt5::TextEncoder;
use crate::models::vae::WanVae;
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Encodes the prompt list `file` with `text_encoder_path`: [P, L, D] for the P prompts, the
/// samples cycling over them (or all on `fixed`). The encoder is dropped before generation.
fn encode_list(
    cfg: &RunConfig,
    n: usize,
    fixed: Option<usize>,
    device: Device,
    file: &Path,
) -> Result<(Tensor, Vec<i64>, Vec<String>)> {
    let Some(te) = &cfg.text_encoder_path else {
        bail!(
            "prompt list {}: set `text_encoder_path` (the umT5 encoder: the Wan2.1 folder or a \
             diffusers folder) to encode it, or pass embeddings from `run-pipeline encode-prompts` \
             as `data_path`",
            file.display()
        );
    };
    let (prompts, _) = crate::text::read_prompt_file(file)?;
    if let Some(p) = fixed.filter(|&p| p >= prompts.len()) {
        bail!(
            "--prompt {p}: {} holds {} prompts",
            file.display(),
            prompts.len()
        );
    }
    let enc = TextEncoder::load(Path::new(te), device, zoo::compute_kind(cfg, device))
        .with_context(|| format!("config key `text_encoder_path`: {te}"))?;
    let _g = tch::no_grad_guard();
    let mut parts = vec![];
    for chunk in prompts.chunks(8) {
        parts.push(enc.encode_with_lens(chunk)?.0.to_kind(Kind::Float));
    }
    let cond = Tensor::cat(&parts, 0);
    let ids: Vec<i64> = (0..n)
        .map(|i| fixed.unwrap_or(i % prompts.len()) as i64)
        .collect();
    let labels = ids.iter().map(|&i| prompts[i as usize].clone()).collect();
    let rows = Tensor::from_slice(&ids).to_device(cond.device());
    Ok((cond.index_select(0, &rows).to_device(device), ids, labels))
}

/// The VAE of `vae_path` when the latents are its (16 channels), else None. A `vae_path` that
/// does not fit the generator's latents is an error.
pub(super) fn load_vae(cfg: &RunConfig, device: Device) -> Result<Option<WanVae>> {
    let Some(p) = &cfg.vae_path else {
        return Ok(None);
    };
    if let Some(arch) = p.strip_prefix(resolve::RANDOM_PREFIX) {
        ensure!(
            arch.eq_ignore_ascii_case("wan2.1"),
            "config key `vae_path`: `{p}`: the random VAE preset is `random:wan2.1`"
        );
        eprintln!(
            "RANDOM WEIGHTS: the VAE is Wan2.1's architecture with random weights (benchmarks)"
        );
        return Ok(Some(WanVae::random(
            crate::models::vae::VaeConfig::wan21(),
            device,
            zoo::compute_kind(cfg, device),
            cfg.seed,
        )?));
    }
    let vae = WanVae::load(Path::new(p), device, zoo::compute_kind(cfg, device))
        .with_context(|| format!("config key `vae_path`: {p}"))?;
    let c = cfg.image_or_video_shape[2];
    ensure!(
        vae.cfg.z_dim == c,
        "config key `vae_path`: the VAE {p} has {} latent channels, the generator's latents {c} \
         (image_or_video_shape)",
        vae.cfg.z_dim
    );
    Ok(Some(vae))
}

/// Conditioning for N samples: ([N, L, D] cond, prompt ids, prompt labels).
pub(super) fn conditioning(
    cfg: &RunConfig,
    n: usize,
    fixed: Option<usize>,
    device: Device,
    prompt_file: Option<&Path>,
) -> Result<(Tensor, Vec<i64>, Vec<String>)> {
    let txt = prompt_file.map(Path::to_path_buf).or_else(|| {
        cfg.data_path
            .as_ref()
            .filter(|p| p.ends_with(".txt"))
            .map(PathBuf::from)
    });
    if let Some(file) = txt {
        return encode_list(cfg, n, fixed, device, &file);
    }
    if let Some(path) = cfg
        .data_path
        .as_ref()
        .filter(|p| p.ends_with(".safetensors"))
    {
        let store = crate::text::store::EmbeddingsFile::open(Path::new(path))
            .with_context(|| format!("config key `data_path`: {path}"))?;
        let rows = store.len();
        if let Some(p) = fixed.filter(|&p| p >= rows) {
            bail!("--prompt {p}: {path} holds {rows} prompt embeddings");
        }
        let ids: Vec<i64> = (0..n).map(|i| fixed.unwrap_or(i % rows) as i64).collect();
        let texts = crate::text::sidecar_prompts(Path::new(path)).filter(|t| t.len() == rows);
        let labels = ids
            .iter()
            .map(|&i| match &texts {
                Some(t) => t[i as usize].clone(),
                None => format!("prompt {i}"),
            })
            .collect();
        let c = store.batch(&ids)?.to_kind(Kind::Float);
        return Ok((c.to_device(device), ids, labels));
    }
    if !zoo::toy_prompts_allowed(cfg) {
        bail!(
            "no prompts: pass --prompts FILE.txt (with `text_encoder_path` set) or set `data_path` \
             (a .txt list, or a .safetensors from `run-pipeline encode-prompts`); toy prompts are \
             only used with toy or random-weight generators"
        );
    }
    let t = &cfg.toy;
    // The same text sizes the training prompt source uses.
    let (text_dim, text_len) = zoo::toy_text_sizes(cfg);
    let k = t.num_classes.max(0) as usize;
    ensure!(
        text_len >= 1 && text_dim >= k as i64,
        "config keys `toy.text_len` ({text_len}) / `toy.text_dim` ({text_dim}): need text_len >= 1 \
         and text_dim >= toy.num_classes ({k})"
    );
    if let Some(p) = fixed.filter(|&p| p >= k.max(1)) {
        bail!("--prompt {p}: the toy has {k} classes (toy.num_classes)");
    }
    let enc = ToyTextEncoder::new(k, text_len as usize, text_dim as usize);
    let ids: Vec<i64> = (0..n)
        .map(|i| {
            if k == 0 {
                -1
            } else {
                fixed.unwrap_or(i % k) as i64
            }
        })
        .collect();
    let prompts: Vec<String> = ids
        .iter()
        .map(|&c| {
            if c < 0 {
                String::new()
            } else {
                format!("class {c}")
            }
        })
        .collect();
    let labels = prompts
        .iter()
        .map(|p| if p.is_empty() { "-".into() } else { p.clone() })
        .collect();
    Ok((enc.encode_on(&prompts, device), ids, labels))
}
