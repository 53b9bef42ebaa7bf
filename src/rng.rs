//! Keyed randomness: every draw is derived from (seed, step, lane, purpose, rank), never from a
//! global generator, so the order in which actor threads run never changes the numbers.
//!
//! tch 0.24 has no generator objects (spec/libtorch_from_rust.md §4), so draws are produced on the
//! host with ChaCha8 (counter-based: a key selects the stream) and Box–Muller, then moved to the
//! requested device. The numbers are identical on CPU and GPU builds.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use tch::{Device, Kind, Tensor};

/// What a random draw is for. Distinct purposes never share a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Purpose {
    /// Initial rollout noise ε.
    RolloutNoise = 1,
    /// Re-noising between few-step denoising steps inside the rollout.
    RolloutRenoise = 2,
    /// Noise of the context (KV-cache) re-run.
    ContextNoise = 3,
    /// Exit step / number of blocks draws.
    ExitStep = 4,
    /// Score timestep sampling.
    ScoreTimestep = 5,
    /// Noise ε of the noiser.
    ScoreNoise = 6,
    /// Prompt / data selection.
    Data = 7,
    /// Model initialisation.
    Init = 8,
    /// Evaluation / sampling.
    Eval = 9,
    /// Anything a test needs.
    Test = 10,
}

/// Which lane of the step a draw belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum Lane {
    Generator = 0,
    Critic = 1,
    Other = 2,
}

/// The full key of one random stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RngKey {
    pub seed: u64,
    pub step: u64,
    pub lane: Lane,
    pub purpose: Purpose,
    pub rank: u32,
    /// Sub-index within one (step, lane, purpose): e.g. block i and denoising step j of a rollout.
    pub sub: u64,
    /// Sample (row) index within the step's global batch: micro-batch m of size B holds rows
    /// m·B..(m+1)·B, so k micro-batches draw exactly what one batch of k·B would.
    pub row: u64,
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl RngKey {
    pub fn new(seed: u64, step: u64, lane: Lane, purpose: Purpose) -> Self {
        RngKey {
            seed,
            step,
            lane,
            purpose,
            rank: 0,
            sub: 0,
            row: 0,
        }
    }
    pub fn rank(mut self, rank: u32) -> Self {
        self.rank = rank;
        self
    }
    #[allow(clippy::should_implement_trait)]
    pub fn sub(mut self, sub: u64) -> Self {
        self.sub = sub;
        self
    }
    pub fn row(mut self, row: u64) -> Self {
        self.row = row;
        self
    }

    /// A 64-bit digest of the key (SplitMix64 chained over its fields; `row` only when set, so
    /// row-free keys keep their streams).
    pub fn digest(&self) -> u64 {
        let mut h = splitmix64(self.seed);
        for v in [
            self.step,
            self.lane as u64,
            self.purpose as u64,
            self.rank as u64,
            self.sub,
        ] {
            h = splitmix64(h ^ v);
        }
        if self.row != 0 {
            h = splitmix64(h ^ self.row ^ 0x524F_5700_0000_0000);
        }
        h
    }
    /// The generator for this key.
    pub fn rng(&self) -> ChaCha8Rng {
        let mut seed = [0u8; 32];
        let d = self.digest();
        seed[..8].copy_from_slice(&d.to_le_bytes());
        seed[8..16].copy_from_slice(&splitmix64(d).to_le_bytes());
        ChaCha8Rng::from_seed(seed)
    }
}

/// Uniform in (0, 1), never exactly 0 (so logs are finite).
fn uniform_open(r: &mut ChaCha8Rng) -> f64 {
    ((r.next_u64() >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
}

/// `n` standard normal f32 values (Box–Muller, both outputs used).
pub fn normal_vec(key: &RngKey, n: usize) -> Vec<f32> {
    let mut r = key.rng();
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1 = uniform_open(&mut r);
        let u2 = uniform_open(&mut r);
        let rad = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
        out.push((rad * c) as f32);
        out.push((rad * s) as f32);
    }
    out.truncate(n);
    out
}

/// Standard normal tensor of `shape`, generated from `key`, cast to `kind` on `device`.
pub fn randn(key: &RngKey, shape: &[i64], kind: Kind, device: Device) -> Tensor {
    let n: i64 = shape.iter().product();
    let v = normal_vec(key, n.max(0) as usize);
    Tensor::from_slice(&v)
        .view(shape)
        .to_device(device)
        .to_kind(kind)
}

/// Standard normal rows: row i of `[n, rest…]` comes from `key.row(first + i)`, so any split of
/// a batch into micro-batches draws the same numbers as the whole batch.
pub fn randn_rows(
    key: &RngKey,
    first: u64,
    n: i64,
    rest: &[i64],
    kind: Kind,
    device: Device,
) -> Tensor {
    let per: i64 = rest.iter().product();
    let mut v = Vec::with_capacity((n * per).max(0) as usize);
    for i in 0..n.max(0) as u64 {
        v.extend(normal_vec(&key.row(first + i), per.max(0) as usize));
    }
    let mut shape = vec![n];
    shape.extend_from_slice(rest);
    Tensor::from_slice(&v)
        .view(shape.as_slice())
        .to_device(device)
        .to_kind(kind)
}

/// Integers uniform in [lo, hi) (hi > lo), as i64 values.
pub fn randint_vec(key: &RngKey, lo: i64, hi: i64, n: usize) -> Vec<i64> {
    assert!(hi > lo, "randint: empty range [{lo}, {hi})");
    let span = (hi - lo) as u64;
    let mut r = key.rng();
    // Rejection sampling keeps the draw exactly uniform.
    let zone = u64::MAX - (u64::MAX % span);
    (0..n)
        .map(|_| loop {
            let x = r.next_u64();
            if x < zone {
                break lo + (x % span) as i64;
            }
        })
        .collect()
}

/// Uniform f64 values in (0, 1).
pub fn uniform_vec(key: &RngKey, n: usize) -> Vec<f64> {
    uniform_iter(key).take(n).collect()
}

/// The numbers of [`uniform_vec`] as an endless iterator (no intermediate f64 vector).
pub fn uniform_iter(key: &RngKey) -> impl Iterator<Item = f64> {
    let mut r = key.rng();
    std::iter::repeat_with(move || uniform_open(&mut r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_same_numbers_and_keys_differ() {
        let k = RngKey::new(7, 3, Lane::Critic, Purpose::ScoreNoise);
        assert_eq!(normal_vec(&k, 9), normal_vec(&k, 9));
        assert_ne!(normal_vec(&k, 9), normal_vec(&k.sub(1), 9));
        assert_ne!(normal_vec(&k, 9), normal_vec(&k.rank(1), 9));
        let g = RngKey {
            lane: Lane::Generator,
            ..k
        };
        assert_ne!(normal_vec(&k, 9), normal_vec(&g, 9));
    }

    #[test]
    fn normal_moments() {
        let v = normal_vec(&RngKey::new(1, 0, Lane::Other, Purpose::Test), 200_000);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "var {var}");
    }

    #[test]
    fn randint_is_uniform_and_in_range() {
        let v = randint_vec(&RngKey::new(1, 0, Lane::Other, Purpose::Test), 0, 4, 40_000);
        let mut c = [0usize; 4];
        for x in v {
            c[x as usize] += 1;
        }
        for k in c {
            assert!((k as f64 / 10_000.0 - 1.0).abs() < 0.05, "{c:?}");
        }
    }
}
