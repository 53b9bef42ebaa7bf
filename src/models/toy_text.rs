//! A deterministic built-in toy text encoder and its embedded prompt set, so that the toy
//! pipelines (GMM teacher, small MLPs) need no downloads and have an exact meaning for prompts.
//!
//! Encoding of one prompt into an [L, D] matrix (`L = text_len`, `D = text_dim`):
//! - **Class indicator**: row 0, entries `0..num_classes`, is the one-hot of the class the prompt
//!   names ("class 3", "a video of class 3", …). All zeros means *unconditional*. The exact GMM
//!   teacher reads only this indicator (see `models::gmm`).
//! - **Text features**: every other entry (row 0 from `num_classes` on, rows 1..L entirely) is a
//!   deterministic pseudo-random N(0, 1) value seeded by a hash (FNV-1a 64) of the prompt's
//!   exact bytes, so neural critics see a richer input that still identifies the prompt.
//! - The **empty prompt** (or whitespace only) encodes to all zeros: it is the canonical
//!   unconditional / negative prompt (`NEGATIVE_PROMPT`).
//!
//! Unknown prompt text is accepted: it is unconditional (zero indicator, hashed features)
//! unless it names a class, i.e. contains the word `class` followed by an integer in
//! `0..num_classes` (case-insensitive, words split on non-alphanumeric characters; the first such
//! pair wins). A class number out of range names no class and is therefore unconditional.

use crate::rng::{self, Lane, Purpose, RngKey};
use tch::{Device, Kind, Tensor};

/// The negative prompt of the toy pipelines: the empty prompt, whose embedding is all zeros and
/// whose class indicator is zero (the whole mixture, i.e. unconditional).
pub const NEGATIVE_PROMPT: &str = "";

/// Phrasings of the embedded prompt set; `{}` is the class number.
const TEMPLATES: [&str; 3] = ["class {}", "a video of class {}", "class {}, smooth motion"];

/// Seed of the feature hash stream (distinct from any training seed by construction: it is
/// XOR-ed into the text hash, and the purpose is `Data`).
const FEATURE_SEED_SALT: u64 = 0x5354_494C_4C46_4C57; // "STILLFLW"

/// The toy text encoder. Cheap to construct; holds only its sizes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToyTextEncoder {
    num_classes: usize,
    text_len: usize,
    text_dim: usize,
}

/// FNV-1a 64-bit hash (stable across platforms and releases, unlike `std`'s hasher).
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

impl ToyTextEncoder {
    /// Panics if `text_len == 0` or `text_dim < num_classes` (the indicator must fit in row 0):
    /// these are programming errors in a preset, not user input.
    pub fn new(num_classes: usize, text_len: usize, text_dim: usize) -> Self {
        assert!(text_len >= 1, "ToyTextEncoder: text_len must be >= 1");
        assert!(
            text_dim >= num_classes,
            "ToyTextEncoder: text_dim ({text_dim}) must be >= num_classes ({num_classes})"
        );
        ToyTextEncoder {
            num_classes,
            text_len,
            text_dim,
        }
    }

    pub fn num_classes(&self) -> usize {
        self.num_classes
    }
    pub fn text_len(&self) -> usize {
        self.text_len
    }
    pub fn text_dim(&self) -> usize {
        self.text_dim
    }

    /// The embedded prompt set: `TEMPLATES.len()` phrasings per class, ordered by phrasing then
    /// class ("class 0", "class 1", …, "a video of class 0", …). Deterministic.
    pub fn prompts(&self) -> Vec<String> {
        TEMPLATES
            .iter()
            .flat_map(|t| (0..self.num_classes).map(move |k| t.replace("{}", &k.to_string())))
            .collect()
    }

    /// The class a prompt names, if any (rules in the module doc).
    pub fn class_of(&self, prompt: &str) -> Option<usize> {
        let lower = prompt.to_lowercase();
        let words: Vec<&str> = lower
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect();
        words.windows(2).find_map(|w| {
            if w[0] == "class" {
                w[1].parse::<usize>().ok().filter(|&k| k < self.num_classes)
            } else {
                None
            }
        })
    }

    /// The [L·D] row-major embedding of one prompt (see the module doc).
    pub fn encode_one(&self, prompt: &str) -> Vec<f32> {
        let (l, d) = (self.text_len, self.text_dim);
        let mut out = vec![0f32; l * d];
        if prompt.trim().is_empty() {
            return out;
        }
        let h = fnv1a64(prompt.as_bytes()) ^ FEATURE_SEED_SALT;
        let feats = rng::normal_vec(&RngKey::new(h, 0, Lane::Other, Purpose::Data), l * d);
        out.copy_from_slice(&feats);
        // Row 0's first num_classes entries are the indicator, never features.
        out[..self.num_classes].iter_mut().for_each(|v| *v = 0.0);
        if let Some(k) = self.class_of(prompt) {
            out[k] = 1.0;
        }
        out
    }

    /// Encode a batch of prompts: float32 [B, L, D] on the CPU.
    pub fn encode(&self, prompts: &[String]) -> Tensor {
        self.encode_on(prompts, Device::Cpu)
    }

    /// Encode a batch of prompts: float32 [B, L, D] on `device`.
    pub fn encode_on(&self, prompts: &[String], device: Device) -> Tensor {
        let mut flat = Vec::with_capacity(prompts.len() * self.text_len * self.text_dim);
        for p in prompts {
            flat.extend(self.encode_one(p));
        }
        Tensor::from_slice(&flat)
            .view([
                prompts.len() as i64,
                self.text_len as i64,
                self.text_dim as i64,
            ])
            .to_device(device)
    }

    /// The unconditional embedding (the empty / negative prompt) repeated `b` times: all zeros.
    pub fn uncond(&self, b: usize) -> Tensor {
        Tensor::zeros(
            [b as i64, self.text_len as i64, self.text_dim as i64],
            (Kind::Float, Device::Cpu),
        )
    }

    /// Read the class indicator back from an embedding [B, L, D]: float64 [B, num_classes] on the
    /// CPU. Errors name the mismatch.
    pub fn indicator(cond: &Tensor, num_classes: usize) -> anyhow::Result<Tensor> {
        let size = cond.size();
        anyhow::ensure!(
            size.len() == 3 && size[1] >= 1 && size[2] >= num_classes as i64,
            "toy text: cond must be [B, L>=1, D>={num_classes}] to carry a {num_classes}-class indicator, got {size:?}"
        );
        Ok(cond
            .select(1, 0)
            .narrow(1, 0, num_classes as i64)
            .to_kind(Kind::Double)
            .to_device(Device::Cpu))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_parsing_rules() {
        let e = ToyTextEncoder::new(4, 2, 8);
        assert_eq!(e.class_of("class 3"), Some(3));
        assert_eq!(e.class_of("A video of CLASS 2, please"), Some(2));
        assert_eq!(e.class_of("class 4"), None); // out of range
        assert_eq!(e.class_of("classy 1"), None);
        assert_eq!(e.class_of("a cat"), None);
        assert_eq!(e.class_of(""), None);
        for (i, p) in e.prompts().iter().enumerate() {
            assert_eq!(e.class_of(p), Some(i % 4), "{p}");
        }
        assert_eq!(e.prompts().len(), 12);
    }

    #[test]
    fn fnv_known_value() {
        // FNV-1a 64 of "a" is a published test vector.
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
