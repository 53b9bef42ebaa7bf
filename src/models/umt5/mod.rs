//! umT5-XXL, the text encoder Wan2.1 conditions on: tokenizer (with Wan's prompt cleaning),
//! encoder, and loading from Wan's release folder or diffusers' layout.
//! See docs/TEXT_ENCODER.md for the layouts, the key names and the numerics.

mod clean;
pub mod config;
mod entities;
pub mod keys;
pub mod model;
pub mod tokenizer;

pub use clean::{ftfy_subset, html_unescape, wan_clean};
pub use config::Umt5Config;
pub use keys::{hf_to_wan, hf_to_wan_tensors, wan_to_hf};
pub use model::{bucket_grid, relative_position_bucket, Umt5Encoder};
pub use tokenizer::Umt5Tokenizer;

use crate::models::weights::{copy_into_varstore, load_named_tensors};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// Wan2.1's text length (`text_len` in wan/configs/shared_config.py).
pub const WAN_TEXT_LEN: usize = 512;
/// The encoder file of a Wan2.1 release, converted to safetensors (same names, same kind).
pub const WAN_T5_FILE: &str = "models_t5_umt5-xxl-enc-bf16.safetensors";
const WAN_T5_PTH: &str = "models_t5_umt5-xxl-enc-bf16.pth";
const WAN_TOKENIZER: &str = "google/umt5-xxl/tokenizer.json";
const DOWNLOAD_HINT: &str = "a Wan2.1 release folder (e.g. Wan-AI/Wan2.1-T2V-1.3B: \
     models_t5_umt5-xxl-enc-bf16.pth converted with scripts/import_wan.py, and google/umt5-xxl/) or \
     the text_encoder/ and tokenizer/ folders of Wan-AI/Wan2.1-T2V-1.3B-Diffusers";

/// Where the pieces of a text encoder live.
#[derive(Debug, Clone, PartialEq)]
pub struct TextEncoderFiles {
    /// "wan" (release folder, Wan names, config from the shapes) or "diffusers" (transformers).
    pub layout: &'static str,
    pub weights: Vec<PathBuf>,
    /// transformers' config.json (diffusers layout only).
    pub config: Option<PathBuf>,
    pub tokenizer: PathBuf,
}

fn need_file(p: PathBuf, what: &str) -> Result<PathBuf> {
    if p.is_file() {
        Ok(p)
    } else {
        bail!(
            "umT5 {what} not found: looked for {} (get {DOWNLOAD_HINT})",
            p.display()
        )
    }
}

/// The weight files of a transformers model folder: those named by
/// `model.safetensors.index.json`, else `model.safetensors`, else every `model*.safetensors`.
fn hf_weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index)
            .with_context(|| format!("cannot read {}", index.display()))?;
        let j: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", index.display()))?;
        let map = j
            .get("weight_map")
            .and_then(|m| m.as_object())
            .with_context(|| format!("{} has no weight_map object", index.display()))?;
        let mut names: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        return names
            .into_iter()
            .map(|n| {
                need_file(
                    dir.join(n),
                    &format!("weight shard listed in {}", index.display()),
                )
            })
            .collect();
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read umT5 folder {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("model") && n.ends_with(".safetensors"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!(
            "umT5 weights not found: looked for {} or {} (get {DOWNLOAD_HINT}; .bin files are \
             not read, only safetensors)",
            index.display(),
            single.display()
        );
    }
    Ok(files)
}

/// Finds the files of a Wan release folder, a diffusers `text_encoder/` folder or a diffusers
/// root (see `TextEncoder::load`).
pub fn resolve_files(dir: &Path) -> Result<TextEncoderFiles> {
    if !dir.is_dir() {
        bail!(
            "umT5 text encoder folder {} does not exist (expected {DOWNLOAD_HINT})",
            dir.display()
        );
    }
    let te = dir.join("text_encoder");
    // A Wan release folder has a config.json too (the DiT's): its own files decide first.
    let wan_like = dir.join(WAN_T5_FILE).is_file()
        || dir.join(WAN_T5_PTH).is_file()
        || dir.join("google").is_dir();
    let hf_dir = if te.is_dir() {
        Some((te, dir.join("tokenizer").join("tokenizer.json")))
    } else if dir.join("config.json").is_file() && !wan_like {
        // A text_encoder/ folder: tokenizer beside it (an HF model repo) or in ../tokenizer/.
        let own = dir.join("tokenizer.json");
        let tok = if own.is_file() {
            own
        } else {
            dir.parent()
                .unwrap_or(dir)
                .join("tokenizer")
                .join("tokenizer.json")
        };
        Some((dir.to_path_buf(), tok))
    } else {
        None
    };
    if let Some((te, tok)) = hf_dir {
        let config = need_file(
            te.join("config.json"),
            "config.json of the text_encoder folder",
        )?;
        let weights = hf_weight_files(&te)?;
        let tokenizer = need_file(tok, "tokenizer.json")?;
        return Ok(TextEncoderFiles {
            layout: "diffusers",
            weights,
            config: Some(config),
            tokenizer,
        });
    }
    let w = dir.join(WAN_T5_FILE);
    if !w.is_file() && dir.join(WAN_T5_PTH).is_file() {
        bail!(
            "umT5 weights: {} is a pickled PyTorch file, which stillflow does not read; convert it \
             to {} (same names) with scripts/import_wan.py",
            dir.join(WAN_T5_PTH).display(),
            w.display()
        );
    }
    let weights = vec![need_file(w, "weights (Wan release)")?];
    let tokenizer = need_file(dir.join(WAN_TOKENIZER), "tokenizer.json (Wan release)")?;
    Ok(TextEncoderFiles {
        layout: "wan",
        weights,
        config: None,
        tokenizer,
    })
}

/// Tokenizer + umT5 encoder, ready to turn prompts into the DiT's context.
pub struct TextEncoder {
    pub vs: VarStore,
    pub model: Umt5Encoder,
    pub tokenizer: Umt5Tokenizer,
    pub files: TextEncoderFiles,
}

impl TextEncoder {
    /// Loads from `dir`, which is one of
    /// * a Wan release folder: `models_t5_umt5-xxl-enc-bf16.safetensors` (Wan's names) and
    ///   `google/umt5-xxl/tokenizer.json`; the size is read from the tensor shapes (umT5-XXL for
    ///   the release file);
    /// * a diffusers `text_encoder/` folder: transformers' `config.json` + `model*.safetensors`
    ///   (sharded with `model.safetensors.index.json` or not); tokenizer in
    ///   `../tokenizer/tokenizer.json` (or `tokenizer.json` beside the weights);
    /// * a diffusers root holding `text_encoder/` and `tokenizer/`.
    ///
    /// Weights are cast to `kind` and placed on `device`; prompts give `WAN_TEXT_LEN` tokens.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<TextEncoder> {
        Self::load_with_text_len(dir, device, kind, WAN_TEXT_LEN)
    }

    pub fn load_with_text_len(
        dir: &Path,
        device: Device,
        kind: Kind,
        text_len: usize,
    ) -> Result<TextEncoder> {
        let files = resolve_files(dir)?;
        Self::from_files(files, device, kind, text_len)
    }

    /// Loads explicitly named files (names in the weights may be Wan's or transformers').
    pub fn from_files(
        files: TextEncoderFiles,
        device: Device,
        kind: Kind,
        text_len: usize,
    ) -> Result<TextEncoder> {
        // Tokenizer first: it is small, and a missing one should not cost a 11 GB read.
        let tokenizer = Umt5Tokenizer::from_file(&files.tokenizer, text_len)?;
        let mut tensors = Vec::new();
        for f in &files.weights {
            tensors.extend(load_named_tensors(f)?);
        }
        let hf_names = keys::is_hf_naming(&tensors);
        if hf_names {
            tensors = hf_to_wan_tensors(tensors);
        }
        let source = files
            .weights
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let cfg = match &files.config {
            Some(c) => Umt5Config::from_hf_json(c)?,
            None => Umt5Config::infer_from_wan_tensors(&tensors, &source)?,
        };
        if tokenizer.vocab_size() as i64 > cfg.vocab_size {
            bail!(
                "umT5 tokenizer {} has {} tokens but the encoder ({source}) embeds only {}",
                files.tokenizer.display(),
                tokenizer.vocab_size(),
                cfg.vocab_size
            );
        }
        let mut vs = VarStore::new(device);
        vs.set_kind(kind);
        let model = Umt5Encoder::new(&vs.root(), &cfg)?;
        let label = if hf_names {
            format!("{source} (transformers names, shown mapped to Wan's t5.py names)")
        } else {
            source
        };
        copy_into_varstore(&vs, &tensors, &label)?;
        drop(tensors);
        vs.freeze();
        Ok(TextEncoder {
            vs,
            model,
            tokenizer,
            files,
        })
    }

    /// Prompts → [B, text_len, d_model] in the model's kind, zero past each prompt's length
    /// (what Wan/Self-Forcing feed the DiT). No autograd graph is recorded.
    pub fn encode(&self, prompts: &[String]) -> Result<Tensor> {
        Ok(self.encode_with_lens(prompts)?.0)
    }

    /// [`TextEncoder::encode`] plus each prompt's token count (EOS included): the rows are zero
    /// from there on, so callers can store only the tokens that carry information.
    pub fn encode_with_lens(&self, prompts: &[String]) -> Result<(Tensor, Vec<i64>)> {
        let (ids, mask) = self.tokenizer.encode(prompts)?;
        let lens = Vec::<i64>::try_from(mask.to_kind(tch::Kind::Int64).sum_dim_intlist(
            [1i64].as_slice(),
            false,
            tch::Kind::Int64,
        ))?;
        let ids = ids.to_device(self.vs.device());
        let mask = mask.to_device(self.vs.device());
        let _guard = tch::no_grad_guard();
        Ok((self.model.f_forward(&ids, &mask)?, lens))
    }

    pub fn text_len(&self) -> usize {
        self.tokenizer.text_len()
    }

    pub fn dim(&self) -> i64 {
        self.model.cfg.d_model
    }
}
