//! The resumable prompt-embedding cache: a folder of shards (one per encoded batch, each prompt
//! trimmed to its token count) and `index.json` mapping prompt text → (shard, row, length). The
//! index is rewritten atomically after each shard is on disk, so a crash loses at most the batch
//! in flight. A cache made by another encoder (fingerprint) is not mixed in: it is set aside.

use super::Index;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::Tensor;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub shard: String,
    pub row: i64,
    pub len: i64,
}

#[derive(Serialize, Deserialize)]
struct IndexFile {
    encoder: String,
    entries: Index,
}

pub(crate) struct Cache {
    dir: PathBuf,
    encoder: String,
    entries: Index,
    next_shard: usize,
    /// Recently read shards (name, [b, L, D]).
    loaded: Vec<(String, Tensor)>,
}

impl Cache {
    /// Opens (or creates) the cache in `dir` for the encoder `fingerprint`.
    pub fn open(dir: &Path, fingerprint: &str) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let index = dir.join("index.json");
        let mut entries = Index::new();
        if index.is_file() {
            let text = std::fs::read_to_string(&index)
                .with_context(|| format!("reading {}", index.display()))?;
            match serde_json::from_str::<IndexFile>(&text) {
                Ok(f) if f.encoder == fingerprint => entries = f.entries,
                Ok(_) => {
                    // Another encoder's embeddings: keep them aside, never mix them in.
                    let aside = dir.with_extension(format!(
                        "cache.old-{}",
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs())
                    ));
                    std::fs::rename(dir, &aside).with_context(|| {
                        format!("moving the stale cache {} aside", dir.display())
                    })?;
                    eprintln!(
                        "note: the prompt cache {} was made by another text encoder; moved to {}",
                        dir.display(),
                        aside.display()
                    );
                    std::fs::create_dir_all(dir)?;
                }
                Err(e) => bail!(
                    "{}: corrupt cache index ({e}); delete the folder {} to start over",
                    index.display(),
                    dir.display()
                ),
            }
        }
        let next_shard = entries
            .values()
            .filter_map(|e| {
                e.shard
                    .strip_prefix("shard_")?
                    .strip_suffix(".safetensors")?
                    .parse::<usize>()
                    .ok()
            })
            .max()
            .map_or(0, |m| m + 1);
        Ok(Cache {
            dir: dir.to_path_buf(),
            encoder: fingerprint.to_string(),
            entries,
            next_shard,
            loaded: vec![],
        })
    }

    pub fn contains(&self, prompt: &str) -> bool {
        self.entries
            .get(prompt)
            .is_some_and(|e| self.dir.join(&e.shard).is_file())
    }

    /// Stores one encoded batch: `emb` [B, L, D] (zero past each length), `lens` [B].
    pub fn add_batch(&mut self, prompts: &[String], emb: &Tensor, lens: &[i64]) -> Result<()> {
        let lmax = lens.iter().copied().max().unwrap_or(1).max(1);
        let emb = emb
            .narrow(1, 0, lmax)
            .to_device(tch::Device::Cpu)
            .contiguous();
        let name = format!("shard_{:06}.safetensors", self.next_shard);
        self.next_shard += 1;
        let path = self.dir.join(&name);
        let tmp = path.with_extension("tmp");
        Tensor::write_safetensors(&[("emb", &emb)], &tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path)?;
        for (row, (p, &len)) in prompts.iter().zip(lens).enumerate() {
            self.entries.insert(
                p.clone(),
                Entry {
                    shard: name.clone(),
                    row: row as i64,
                    len,
                },
            );
        }
        let f = IndexFile {
            encoder: self.encoder.clone(),
            entries: self.entries.clone(),
        };
        crate::runtime::ckpt::write_json_atomic(
            &self.dir.join("index.json"),
            &serde_json::to_value(&f)?,
        )
    }

    /// The rows [len, D] of a cached prompt. Shards are read on demand and a few are kept
    /// (prompts are assembled mostly in encoding order), so memory stays bounded.
    pub fn row(&mut self, prompt: &str) -> Result<Tensor> {
        let e = self
            .entries
            .get(prompt)
            .with_context(|| {
                format!(
                    "prompt cache {}: no entry for {prompt:?}",
                    self.dir.display()
                )
            })?
            .clone();
        if !self.loaded.iter().any(|(n, _)| n == &e.shard) {
            let path = self.dir.join(&e.shard);
            let t = Tensor::read_safetensors(&path)
                .with_context(|| format!("reading {}", path.display()))?
                .into_iter()
                .find(|(n, _)| n == "emb")
                .map(|(_, t)| t)
                .with_context(|| format!("{}: no tensor `emb`", path.display()))?;
            if self.loaded.len() >= 8 {
                drop(self.loaded.remove(0));
            }
            self.loaded.push((e.shard.clone(), t));
        }
        let t = &self
            .loaded
            .iter()
            .find(|(n, _)| n == &e.shard)
            .context("shard")?
            .1;
        Ok(t.get(e.row).narrow(0, 0, e.len.max(1)))
    }

    /// The token count of a cached prompt.
    pub fn len_of(&self, prompt: &str) -> Option<i64> {
        self.entries.get(prompt).map(|e| e.len)
    }
}
