//! Prompt text → umT5 embeddings: `run-pipeline encode-prompts`, and the one-time encoding of a
//! `.txt` `data_path` before training.
//!
//! Output: the embeddings file `prompt_source` reads ([`store`]: each prompt's rows trimmed to its
//! token count, read lazily per batch, plus `uncond`, the negative prompt). The encoder's rows
//! past a prompt's length are zero and the Wan DiT zero-pads to its text_len (512), so dropping
//! them changes nothing but the size. A sidecar `<out>.json` records the prompts, the negative
//! prompt and the encoder, so a file made for another negative prompt is refused.
//!
//! Resumable: every encoded batch is stored in `<out>.cache/` (one shard per batch plus an index
//! keyed by prompt text and encoder fingerprint) before the next starts; a re-run, after a crash
//! or with more prompts, encodes only what the cache lacks.

mod cache;
pub mod store;

use crate::models::umt5::TextEncoder;
use anyhow::{bail, ensure, Context, Result};
use cache::Cache;
use serde_json::json;
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

/// What to encode.
#[derive(Clone, Debug)]
pub struct EncodeOptions {
    /// One prompt per line (blank lines are skipped and counted).
    pub prompts: PathBuf,
    /// The text encoder folder (see `TextEncoder::load`).
    pub text_encoder: PathBuf,
    pub out: PathBuf,
    pub negative_prompt: String,
    /// Prompts per encoder call.
    pub batch_size: usize,
    pub device: Device,
    /// Compute kind of the encoder (bf16 on CUDA, f32 on CPU by default).
    pub kind: Kind,
    pub progress: bool,
}

/// What was written.
#[derive(Clone, Debug)]
pub struct EncodeReport {
    pub out: PathBuf,
    pub prompts: usize,
    pub unique: usize,
    /// Prompts encoded in this run (the rest came from the cache).
    pub encoded: usize,
    pub blank_lines: usize,
    /// [N, L, D] of `cond`.
    pub shape: Vec<i64>,
    /// The whole file was already up to date.
    pub up_to_date: bool,
}

/// Reads a prompt list: one prompt per line, trailing `\r` removed, blank lines skipped.
/// Returns the prompts and the number of blank lines.
pub fn read_prompt_file(path: &Path) -> Result<(Vec<String>, usize)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the prompt file", path.display()))?;
    let mut prompts = vec![];
    let mut blank = 0;
    for line in text.lines() {
        let l = line.trim_end_matches('\r');
        if l.trim().is_empty() {
            blank += 1;
        } else {
            prompts.push(l.to_string());
        }
    }
    ensure!(
        !prompts.is_empty(),
        "{}: no prompts (every line is blank)",
        path.display()
    );
    Ok((prompts, blank))
}

/// The sidecar of an embeddings file.
pub fn sidecar_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_os_string();
    s.push(".json");
    PathBuf::from(s)
}

fn cache_dir(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_os_string();
    s.push(".cache");
    PathBuf::from(s)
}

/// Identifies the encoder's weights: the folder plus the names, sizes and modification times of
/// its files, and the compute kind (bf16 and f32 embeddings differ).
fn encoder_fingerprint(dir: &Path, kind: Kind) -> Result<String> {
    let canon = dir
        .canonicalize()
        .with_context(|| format!("text encoder {}: not found", dir.display()))?;
    let mut parts = vec![format!("{}|{kind:?}", canon.display())];
    let mut stack = vec![canon];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut es: Vec<_> = rd.filter_map(|e| e.ok()).collect();
        es.sort_by_key(|e| e.path());
        for e in es {
            let p = e.path();
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(p);
            } else if p
                .extension()
                .is_some_and(|x| x == "safetensors" || x == "json")
            {
                let t = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs());
                parts.push(format!("{}:{}:{t}", p.display(), m.len()));
            }
        }
    }
    Ok(parts.join(";"))
}

/// Encodes `opts.prompts` into `opts.out` (see the module doc).
pub fn encode_prompts(opts: &EncodeOptions) -> Result<EncodeReport> {
    ensure!(opts.batch_size >= 1, "--batch-size must be >= 1");
    let (prompts, blank) = read_prompt_file(&opts.prompts)?;
    let fp = encoder_fingerprint(&opts.text_encoder, opts.kind)?;
    let side = sidecar_path(&opts.out);
    let meta = json!({
        "prompts_file": opts.prompts.display().to_string(),
        "prompts": prompts,
        "negative_prompt": opts.negative_prompt,
        "text_encoder": opts.text_encoder.display().to_string(),
        "encoder_fingerprint": fp,
        "kind": format!("{:?}", opts.kind),
    });
    let mut unique: Vec<String> = vec![];
    {
        let mut seen = std::collections::BTreeSet::new();
        for p in prompts.iter().chain(std::iter::once(&opts.negative_prompt)) {
            if seen.insert(p.clone()) {
                unique.push(p.clone());
            }
        }
    }
    if opts.out.is_file() {
        if let Ok(old) = std::fs::read_to_string(&side) {
            let old: serde_json::Value = serde_json::from_str(&old).unwrap_or_default();
            let same = ["prompts", "negative_prompt", "encoder_fingerprint", "kind"]
                .iter()
                .all(|k| old.get(*k) == meta.get(*k));
            if same {
                let shape: Vec<i64> = old
                    .get("shape")
                    .and_then(|v| serde_json::from_value(v.clone()).ok())
                    .unwrap_or_default();
                return Ok(EncodeReport {
                    out: opts.out.clone(),
                    prompts: prompts.len(),
                    unique: unique.len(),
                    encoded: 0,
                    blank_lines: blank,
                    shape,
                    up_to_date: true,
                });
            }
        }
    }
    let mut cache = Cache::open(&cache_dir(&opts.out), &fp)?;
    let todo: Vec<String> = unique
        .iter()
        .filter(|p| !cache.contains(p))
        .cloned()
        .collect();
    let mut encoded = 0;
    if !todo.is_empty() {
        let enc = TextEncoder::load(&opts.text_encoder, opts.device, opts.kind)
            .with_context(|| format!("loading the text encoder {}", opts.text_encoder.display()))?;
        let bar = if opts.progress {
            indicatif::ProgressBar::new(todo.len() as u64)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "encoding prompts {bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}]",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let _g = tch::no_grad_guard();
        for chunk in todo.chunks(opts.batch_size) {
            let (emb, lens) = enc.encode_with_lens(chunk)?;
            cache.add_batch(chunk, &emb, &lens)?;
            encoded += chunk.len();
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
    }
    if let Some(dir) = opts.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let lens: Vec<i64> = prompts
        .iter()
        .map(|p| cache.len_of(p).context("prompt missing from the cache"))
        .collect::<Result<_>>()?;
    let uncond = cache.row(&opts.negative_prompt)?.unsqueeze(0);
    let (dim, kind) = (uncond.size()[2], uncond.kind());
    store::write(&opts.out, dim, kind, &lens, &uncond, |i| {
        cache.row(&prompts[i])
    })?;
    let shape = vec![
        prompts.len() as i64,
        lens.iter().copied().max().unwrap_or(0),
        dim,
    ];
    let mut meta = meta;
    meta["negative_len"] = json!(uncond.size()[1]);
    meta["shape"] = json!(shape);
    crate::runtime::ckpt::write_json_atomic(&side, &meta)?;
    Ok(EncodeReport {
        out: opts.out.clone(),
        prompts: prompts.len(),
        unique: unique.len(),
        encoded,
        blank_lines: blank,
        shape,
        up_to_date: false,
    })
}

/// Where the driver puts the embeddings of a `.txt` `data_path` (inside the run's logdir, so
/// `--resume` finds them and a new run folder encodes again only what its cache lacks).
pub fn run_embeddings_path(logdir: &Path) -> PathBuf {
    logdir.join("prompts").join("embeddings.safetensors")
}

/// Checks the prompt keys before anything is built: a `.txt` `data_path` needs
/// `text_encoder_path`; a named file must exist. Returns the problems (empty when fine).
pub fn check_prompt_keys(cfg: &crate::config::RunConfig) -> Vec<String> {
    let mut v = vec![];
    let Some(dp) = &cfg.data_path else {
        return v;
    };
    let p = Path::new(dp);
    if !p.is_file() {
        v.push(format!(
            "config key `data_path`: prompt file {dp} not found"
        ));
    }
    if dp.ends_with(".txt") {
        match &cfg.text_encoder_path {
            None => v.push(format!(
                "config key `data_path` is the prompt list {dp}, which needs the umT5 text encoder: \
                 set `text_encoder_path` to the Wan2.1 folder (models_t5_umt5-xxl-enc-bf16 + \
                 google/umt5-xxl/tokenizer.json) or a diffusers folder, or encode once with \
                 `run-pipeline encode-prompts` and set `data_path` to the .safetensors"
            )),
            Some(te) if !Path::new(te).exists() => v.push(format!(
                "config key `text_encoder_path`: {te} not found"
            )),
            _ => {}
        }
    } else if !dp.ends_with(".safetensors") {
        v.push(format!(
            "config key `data_path`: {dp} is neither a .txt prompt list nor a .safetensors file of \
             prompt embeddings"
        ));
    }
    v
}

/// Makes sure the run's prompt embeddings exist when `data_path` is a `.txt` list: rank 0
/// encodes (resumable), other ranks wait for the file. Returns the file `prompt_source` reads
/// (None when `data_path` is not a `.txt`).
pub fn ensure_run_embeddings(
    cfg: &crate::config::RunConfig,
    device: Device,
    rank: usize,
) -> Result<Option<PathBuf>> {
    let Some(dp) = cfg.data_path.as_ref().filter(|d| d.ends_with(".txt")) else {
        return Ok(None);
    };
    let problems = check_prompt_keys(cfg);
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    let te = cfg.text_encoder_path.clone().unwrap_or_default();
    let out = run_embeddings_path(Path::new(&cfg.logdir));
    if rank == 0 {
        let kind = crate::actors::zoo::compute_kind(cfg, device);
        let r = encode_prompts(&EncodeOptions {
            prompts: dp.into(),
            text_encoder: te.into(),
            out: out.clone(),
            negative_prompt: cfg.negative_prompt.clone(),
            batch_size: 8,
            device,
            kind,
            progress: cfg.progress,
        })?;
        if !r.up_to_date {
            eprintln!(
                "encoded {} prompts of {dp} ({} new) into {}",
                r.prompts,
                r.encoded,
                out.display()
            );
        }
    } else {
        // Other ranks wait for rank 0's atomic rename of the sidecar (written last).
        let side = sidecar_path(&out);
        let t0 = std::time::Instant::now();
        while !side.is_file() {
            ensure!(
                t0.elapsed().as_secs() < 3600,
                "rank {rank}: rank 0 did not write {} within an hour",
                side.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    }
    // Then a barrier: a sidecar left by an earlier run may let a rank pass the wait above while
    // rank 0 re-encodes changed prompts; after this every rank reads rank 0's final file.
    if let Some(mut comm) = crate::dist::process_comm() {
        crate::dist::shared_draw(&mut comm, "prompt_embeddings_ready", || 1)?;
    }
    Ok(Some(out))
}

/// Checks an embeddings file's sidecar (when there is one) against the run's negative prompt:
/// `uncond` must be the embedding of the prompt the config names.
pub fn check_sidecar(path: &Path, negative_prompt: &str) -> Result<()> {
    let side = sidecar_path(path);
    let Ok(text) = std::fs::read_to_string(&side) else {
        return Ok(());
    };
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", side.display()))?;
    if let Some(neg) = v.get("negative_prompt").and_then(|n| n.as_str()) {
        if neg != negative_prompt {
            bail!(
                "{}: its `uncond` embeds the negative prompt {:?}, but the config key \
                 `negative_prompt` is {:?}: re-encode with `run-pipeline encode-prompts` (it keeps a \
                 cache) or set negative_prompt to the file's",
                path.display(),
                neg,
                negative_prompt
            );
        }
    }
    Ok(())
}

/// Prompt texts recorded in an embeddings file's sidecar (for sample labels), if any.
pub fn sidecar_prompts(path: &Path) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(sidecar_path(path)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let arr = v.get("prompts")?.as_array()?;
    Some(
        arr.iter()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect(),
    )
}

/// Used by the cache: a map from prompt text to its place.
pub(crate) type Index = std::collections::BTreeMap<String, cache::Entry>;
