//! The prompt-embeddings file, laid out so that neither padding nor the whole file has to fit in
//! memory: real prompt lists have 10⁵ prompts of up to 512 tokens × 4096 dims (a padded
//! [N, 512, 4096] bf16 tensor would be ~4 MB per prompt). A safetensors file with
//!   `offsets` [N+1] i64   prompt i's rows are tokens[offsets[i] .. offsets[i+1]]
//!   `lens`    [N]   i64   its token count (EOS included)
//!   `uncond`  [1, Lu, D]  the negative prompt
//!   `tokens`  [T, D]      every prompt's rows, trimmed to its length, in file order (last)
//! It is written streaming (header first, then the rows) and read lazily: a batch reads only its
//! own rows from disk. Files with the older padded `cond` [N, L, D] + `uncond` are read too.

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Map, Value};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

fn dtype_name(kind: Kind) -> Result<&'static str> {
    Ok(match kind {
        Kind::Float => "F32",
        Kind::BFloat16 => "BF16",
        Kind::Half => "F16",
        k => bail!("prompt embeddings: unsupported kind {k:?}"),
    })
}

fn kind_of(name: &str) -> Option<Kind> {
    match name {
        "F32" => Some(Kind::Float),
        "BF16" => Some(Kind::BFloat16),
        "F16" => Some(Kind::Half),
        _ => None,
    }
}

/// Little-endian bytes of a contiguous CPU tensor.
fn bytes_of(t: &Tensor) -> Result<Vec<u8>> {
    let t = t.to_device(tch::Device::Cpu).contiguous();
    let n = t.numel() * t.kind().elt_size_in_bytes();
    let mut v = vec![0u8; n];
    t.f_copy_data_u8(&mut v, t.numel())?;
    Ok(v)
}

/// Writes the file at `path` (through a temporary name, renamed at the end). `rows(i)` gives
/// prompt i's rows [lens[i], D] in `kind`; they are fetched and written one at a time.
pub fn write(
    path: &Path,
    dim: i64,
    kind: Kind,
    lens: &[i64],
    uncond: &Tensor,
    mut rows: impl FnMut(usize) -> Result<Tensor>,
) -> Result<()> {
    let elt = kind.elt_size_in_bytes() as u64;
    let n = lens.len();
    let mut offsets = vec![0i64; n + 1];
    for (i, l) in lens.iter().enumerate() {
        ensure!(*l >= 1, "prompt {i}: no tokens");
        offsets[i + 1] = offsets[i] + l;
    }
    let uncond = uncond.to_kind(kind);
    let blobs: Vec<(&str, Vec<i64>, &str, Vec<u8>)> = vec![
        (
            "offsets",
            vec![n as i64 + 1],
            "I64",
            bytes_of(&Tensor::from_slice(&offsets))?,
        ),
        (
            "lens",
            vec![n as i64],
            "I64",
            bytes_of(&Tensor::from_slice(lens))?,
        ),
        (
            "uncond",
            uncond.size(),
            dtype_name(kind)?,
            bytes_of(&uncond)?,
        ),
    ];
    let mut header = Map::new();
    let mut at = 0u64;
    for (name, shape, dt, b) in &blobs {
        header.insert(
            name.to_string(),
            json!({"dtype": dt, "shape": shape, "data_offsets": [at, at + b.len() as u64]}),
        );
        at += b.len() as u64;
    }
    let total = offsets[n] as u64;
    let tokens_bytes = total * dim as u64 * elt;
    header.insert(
        "tokens".into(),
        json!({"dtype": dtype_name(kind)?, "shape": [total, dim], "data_offsets": [at, at + tokens_bytes]}),
    );
    let mut hb = serde_json::to_vec(&Value::Object(header))?;
    while hb.len() % 8 != 0 {
        hb.push(b' ');
    }
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut w = BufWriter::new(f);
    w.write_all(&(hb.len() as u64).to_le_bytes())?;
    w.write_all(&hb)?;
    for (_, _, _, b) in &blobs {
        w.write_all(b)?;
    }
    for (i, &l) in lens.iter().enumerate() {
        let r = rows(i)?.to_kind(kind);
        ensure!(
            r.size() == [l, dim],
            "prompt {i}: rows {:?}, expected [{l}, {dim}]",
            r.size()
        );
        w.write_all(&bytes_of(&r)?)?;
    }
    let f = w
        .into_inner()
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", tmp.display()))?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// An embeddings file open for reading.
pub struct EmbeddingsFile {
    path: PathBuf,
    file: File,
    kind: Kind,
    dim: i64,
    /// Ragged layout: prompt offsets and the byte position of `tokens`.
    offsets: Vec<i64>,
    tokens_at: u64,
    /// Padded layout (`cond` [N, L, D]) kept in memory.
    padded: Option<Tensor>,
    uncond: Tensor,
}

impl EmbeddingsFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        let mut n8 = [0u8; 8];
        file.read_exact_at(&mut n8, 0)
            .with_context(|| format!("{}: not a safetensors file (too short)", path.display()))?;
        let n = u64::from_le_bytes(n8);
        ensure!(
            n < 100_000_000,
            "{}: not a safetensors file (header length {n})",
            path.display()
        );
        let mut hb = vec![0u8; n as usize];
        file.read_exact_at(&mut hb, 8)
            .with_context(|| format!("{}: truncated header", path.display()))?;
        let header: Value = serde_json::from_slice(&hb)
            .with_context(|| format!("{}: header is not JSON", path.display()))?;
        let data_at = 8 + n;
        let entry = |name: &str| -> Option<(Kind, Vec<i64>, u64, u64)> {
            let e = header.get(name)?;
            let dt = e.get("dtype")?.as_str()?;
            let kind = if dt == "I64" {
                Kind::Int64
            } else {
                kind_of(dt)?
            };
            let shape = e
                .get("shape")?
                .as_array()?
                .iter()
                .filter_map(|v| v.as_i64())
                .collect();
            let o = e.get("data_offsets")?.as_array()?;
            Some((kind, shape, o.first()?.as_u64()?, o.get(1)?.as_u64()?))
        };
        let read = |name: &str| -> Result<Tensor> {
            let (kind, shape, a, b) = entry(name)
                .with_context(|| format!("{}: no readable tensor `{name}`", path.display()))?;
            let mut buf = vec![0u8; (b - a) as usize];
            file.read_exact_at(&mut buf, data_at + a)
                .with_context(|| format!("{}: truncated tensor `{name}`", path.display()))?;
            Ok(Tensor::f_from_data_size(&buf, &shape, kind)?)
        };
        let uncond = read("uncond").with_context(|| {
            format!(
                "{}: prompt embeddings need `uncond` [1, L, D] (the negative prompt)",
                path.display()
            )
        })?;
        ensure!(
            uncond.dim() == 3 && uncond.size()[0] == 1,
            "{}: `uncond` {:?} must be [1, L, D]",
            path.display(),
            uncond.size()
        );
        let dim = uncond.size()[2];
        if let Some((kind, shape, a, b)) = entry("tokens") {
            let offsets = Vec::<i64>::try_from(read("offsets")?)?;
            ensure!(
                shape.len() == 2
                    && shape[1] == dim
                    && offsets.first() == Some(&0)
                    && offsets.windows(2).all(|w| w[1] > w[0])
                    && offsets.last() == Some(&shape[0])
                    && (b - a) == (shape[0] * dim) as u64 * kind.elt_size_in_bytes() as u64,
                "{}: `tokens` {shape:?} and `offsets` do not agree (file corrupt?)",
                path.display()
            );
            return Ok(EmbeddingsFile {
                path: path.to_path_buf(),
                file,
                kind,
                dim,
                offsets,
                tokens_at: data_at + a,
                padded: None,
                uncond,
            });
        }
        let cond = read("cond").with_context(|| {
            format!("{}: neither `tokens` + `offsets` (run-pipeline encode-prompts) nor `cond` [N, L, D]", path.display())
        })?;
        ensure!(
            cond.dim() == 3 && cond.size()[2] == dim,
            "{}: `cond` {:?} and `uncond` {:?} must be [N, L, D] and [1, L, D]",
            path.display(),
            cond.size(),
            uncond.size()
        );
        Ok(EmbeddingsFile {
            path: path.to_path_buf(),
            file,
            kind: cond.kind(),
            dim,
            offsets: vec![],
            tokens_at: 0,
            padded: Some(cond),
            uncond,
        })
    }

    /// Number of prompts.
    pub fn len(&self) -> usize {
        match &self.padded {
            Some(c) => c.size()[0] as usize,
            None => self.offsets.len() - 1,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dim(&self) -> i64 {
        self.dim
    }

    /// The negative prompt's embedding [1, Lu, D] (stored kind).
    pub fn uncond(&self) -> &Tensor {
        &self.uncond
    }

    /// Prompt i's rows [len, D] (stored kind); padded files give all L rows.
    pub fn rows(&self, i: usize) -> Result<Tensor> {
        ensure!(
            i < self.len(),
            "{}: prompt {i} of {}",
            self.path.display(),
            self.len()
        );
        if let Some(c) = &self.padded {
            return Ok(c.get(i as i64));
        }
        let (a, b) = (self.offsets[i], self.offsets[i + 1]);
        let row_bytes = self.dim as u64 * self.kind.elt_size_in_bytes() as u64;
        let mut buf = vec![0u8; ((b - a) as u64 * row_bytes) as usize];
        self.file
            .read_exact_at(&mut buf, self.tokens_at + a as u64 * row_bytes)
            .with_context(|| format!("{}: reading prompt {i}", self.path.display()))?;
        Ok(Tensor::f_from_data_size(
            &buf,
            &[b - a, self.dim],
            self.kind,
        )?)
    }

    /// Prompts `idx` as [B, L, D] (stored kind), zero past each prompt's rows, L the longest of
    /// them (the Wan DiT zero-pads to its text_len: the same values as a 512-row padding).
    pub fn batch(&self, idx: &[i64]) -> Result<Tensor> {
        let rows: Vec<Tensor> = idx
            .iter()
            .map(|&i| self.rows(i.max(0) as usize))
            .collect::<Result<_>>()?;
        let l = rows.iter().map(|r| r.size()[0]).max().unwrap_or(1);
        let padded: Vec<Tensor> = rows
            .iter()
            .map(|r| r.constant_pad_nd([0, 0, 0, l - r.size()[0]]))
            .collect();
        Ok(Tensor::stack(&padded, 0))
    }
}
