//! File level of checkpoints: safetensors written and fsynced, a content checksum, and validated
//! reads whose every error names the file.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::path::Path;
use tch::{Device, Tensor};

use crate::optim::{list_names, NamedTensors};

/// What state.json records about one safetensors file, checked on load.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartManifest {
    pub file: String,
    pub bytes: u64,
    /// [`checksum64`] of the whole file, hex.
    pub checksum: String,
    pub tensors: BTreeMap<String, TensorInfo>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorInfo {
    pub dtype: String,
    pub shape: Vec<i64>,
}

/// A fast 64-bit checksum (not cryptographic) that catches truncation and flipped bytes: 8 bytes
/// at a time through a multiply–rotate mix, length folded in, splitmix finaliser.
#[derive(Clone)]
pub struct Checksum64 {
    h: u64,
    len: u64,
    tail: Vec<u8>,
}

impl Default for Checksum64 {
    fn default() -> Self {
        Checksum64 {
            h: 0x243F_6A88_85A3_08D3,
            len: 0,
            tail: Vec::with_capacity(8),
        }
    }
}

impl Checksum64 {
    fn mix(&mut self, w: u64) {
        self.h = (self.h ^ w.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .rotate_left(31)
            .wrapping_mul(0xBF58_476D_1CE4_E5B9);
    }
    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if !self.tail.is_empty() {
            let need = 8 - self.tail.len();
            let take = need.min(data.len());
            self.tail.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.tail.len() == 8 {
                let w = u64::from_le_bytes(self.tail[..].try_into().unwrap_or([0; 8]));
                self.mix(w);
                self.tail.clear();
            }
        }
        let mut chunks = data.chunks_exact(8);
        for c in &mut chunks {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            self.mix(u64::from_le_bytes(b));
        }
        self.tail.extend_from_slice(chunks.remainder());
    }
    pub fn finish(mut self) -> u64 {
        if !self.tail.is_empty() {
            let mut b = [0u8; 8];
            b[..self.tail.len()].copy_from_slice(&self.tail);
            self.mix(u64::from_le_bytes(b));
        }
        let mut z = self.h ^ self.len.wrapping_mul(0x94D0_49BB_1331_11EB);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

pub fn checksum64(data: &[u8]) -> u64 {
    let mut c = Checksum64::default();
    c.update(data);
    c.finish()
}

/// Size and checksum of a file, streamed.
pub fn file_checksum(path: &Path) -> Result<(u64, u64)> {
    let mut f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut c = Checksum64::default();
    let mut buf = vec![0u8; 1 << 20];
    let mut n_total = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        n_total += n as u64;
        c.update(&buf[..n]);
    }
    Ok((n_total, c.finish()))
}

pub fn fsync_file(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot fsync {}", path.display()))
}

/// fsync a directory, so that a rename or new entries in it are durable.
pub fn fsync_dir(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot fsync directory {}", path.display()))
}

/// Writes named tensors (any device; copied to contiguous CPU) as safetensors at `path`, fsyncs it
/// and returns its manifest.
pub fn write_part(path: &Path, tensors: &[(String, Tensor)]) -> Result<PartManifest> {
    let mut seen = HashSet::new();
    let mut infos = BTreeMap::new();
    let mut cpu: Vec<(String, Tensor)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        if !seen.insert(name.as_str()) {
            bail!("{}: tensor `{name}` given twice", path.display());
        }
        let c = t
            .f_detach()
            .and_then(|t| t.f_to_device(Device::Cpu))
            .and_then(|t| t.f_contiguous())
            .with_context(|| format!("{}: cannot copy `{name}` to the CPU", path.display()))?;
        infos.insert(
            name.clone(),
            TensorInfo {
                dtype: format!("{:?}", c.kind()),
                shape: c.size(),
            },
        );
        cpu.push((name.clone(), c));
    }
    Tensor::write_safetensors(&cpu, path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    fsync_file(path)?;
    let (bytes, sum) = file_checksum(path)?;
    let file = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(PartManifest {
        file,
        bytes,
        checksum: format!("{sum:016x}"),
        tensors: infos,
    })
}

/// Reads `dir/manifest.file` and checks it against the manifest: size (truncation), checksum
/// (corruption), safetensors structure, tensor names, dtypes and shapes. Returns the tensors sorted
/// by name.
pub fn read_part(dir: &Path, m: &PartManifest) -> Result<NamedTensors> {
    let path = dir.join(&m.file);
    let meta = std::fs::metadata(&path)
        .with_context(|| format!("checkpoint file {} is missing", path.display()))?;
    if meta.len() != m.bytes {
        bail!(
            "checkpoint file {} has {} bytes, state.json recorded {} (truncated or replaced)",
            path.display(),
            meta.len(),
            m.bytes
        );
    }
    let (_, sum) = file_checksum(&path)?;
    if format!("{sum:016x}") != m.checksum {
        bail!(
            "checkpoint file {} is corrupt: checksum {sum:016x}, state.json recorded {}",
            path.display(),
            m.checksum
        );
    }
    let mut tensors = Tensor::read_safetensors(&path)
        .with_context(|| format!("cannot read checkpoint file {}", path.display()))?;
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let have: HashSet<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    let missing: Vec<String> = m
        .tensors
        .keys()
        .filter(|k| !have.contains(k.as_str()))
        .cloned()
        .collect();
    if !missing.is_empty() {
        bail!(
            "checkpoint file {}: missing {}",
            path.display(),
            list_names(&missing)
        );
    }
    let extra: Vec<String> = tensors
        .iter()
        .filter(|(n, _)| !m.tensors.contains_key(n))
        .map(|(n, _)| n.clone())
        .collect();
    if !extra.is_empty() {
        bail!(
            "checkpoint file {}: unexpected {}",
            path.display(),
            list_names(&extra)
        );
    }
    for (name, t) in &tensors {
        let info = &m.tensors[name];
        let dtype = format!("{:?}", t.kind());
        if info.dtype != dtype || info.shape != t.size() {
            bail!(
                "checkpoint file {}: `{name}` is {dtype} {:?}, state.json recorded {} {:?}",
                path.display(),
                t.size(),
                info.dtype,
                info.shape
            );
        }
    }
    Ok(tensors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_is_chunking_independent_and_sensitive() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 31 % 251) as u8).collect();
        let whole = checksum64(&data);
        for split in [1usize, 3, 7, 8, 9, 500, 999] {
            let mut c = Checksum64::default();
            for chunk in data.chunks(split) {
                c.update(chunk);
            }
            assert_eq!(c.finish(), whole, "chunks of {split}");
        }
        let mut flipped = data.clone();
        flipped[517] ^= 1;
        assert_ne!(checksum64(&flipped), whole);
        assert_ne!(checksum64(&data[..999]), whole);
        // Trailing zeros change the length, hence the sum.
        let mut longer = data.clone();
        longer.push(0);
        assert_ne!(checksum64(&longer), whole);
    }
}
