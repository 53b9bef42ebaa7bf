//! Quality metrics of generated samples against a known truth (Gaussian-mixture teachers).
//!
//! Definitions (samples [N, …], D = gmm.dim() values per row; "target" = the class-conditional
//! mixture π_k(class), or the whole mixture for `class = None`; modes are assigned by nearest
//! mean):
//! - **coverage**: fraction of target modes whose empirical mass reaches ≥ 50 % of π_k.
//! - **mass error**: max and mean over all K components of |p̂_k − π_k(class)|.
//! - **precision**: fraction of samples with ‖x − μ_k‖² ≤ s_k²·(D + 3√(2D)) for some target mode
//!   (χ²_D mean + 3 sd). Exact samples give `precision_expected` = P(χ²_D ≤ D + 3√(2D)):
//!   0.9817 for D = 2, ≈ 0.998 for large D.
//! - **std ratio**: pooled within-mode std around each mode's empirical mean / true std.
//! - **sliced W2**: against `n` exact samples (fixed keyed draws), `num_projections` fixed keyed
//!   directions; `sliced_w2_floor` is the same statistic between two independent exact sets of the
//!   same size — the noise floor that "≈ 0" means.
//! - **cross-entropy**: −mean log p_target(x) (nats); `cross_entropy_exact` is the same for exact
//!   samples (≈ the target's entropy).
//! - **frame consistency**: fraction of samples whose frames all pick the same nearest mode.

pub mod chi2;
pub mod metrics;

pub use metrics::{
    cross_entropy, expected_precision, frame_consistency, mass_error, mode_counts, mode_coverage,
    precision, precision_radius_sq, projections, sliced_w2, std_ratio,
};

use crate::models::gmm::Gmm;
use crate::rng::{Lane, Purpose, RngKey};
use serde::{Deserialize, Serialize};
use std::fmt;
use tch::Tensor;

/// Seed of the fixed evaluation draws (projections and exact reference samples), so that reports
/// are comparable across runs and machines.
pub const EVAL_SEED: u64 = 0x4556_414C; // "EVAL"

/// Options of `quality_with`.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalOptions {
    /// Number of sliced-W2 directions.
    pub num_projections: usize,
    /// Seed of the projections and of the exact reference samples.
    pub seed: u64,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            num_projections: 128,
            seed: EVAL_SEED,
        }
    }
}

/// All metrics of one sample set. Serialises to a flat JSON object (one `metrics.jsonl` entry).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QualityReport {
    pub n: usize,
    pub class: Option<usize>,
    /// Number of target modes (π_k(class) > 0).
    pub modes: usize,
    pub coverage: f64,
    pub mass_err_max: f64,
    pub mass_err_mean: f64,
    pub precision: f64,
    pub precision_expected: f64,
    pub std_ratio: f64,
    pub sliced_w2: f64,
    pub sliced_w2_floor: f64,
    pub cross_entropy: f64,
    pub cross_entropy_exact: f64,
    pub frame_consistency: f64,
}

impl fmt::Display for QualityReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let class = self.class.map_or("-".to_string(), |c| c.to_string());
        write!(
            f,
            "n={} class={} coverage={:.3} ({} modes) mass_err={:.4}/{:.4} precision={:.3} (exact {:.3}) \
             std_ratio={:.3} sw2={:.4} (floor {:.4}) xent={:.3} (exact {:.3}) frames={:.3}",
            self.n,
            class,
            self.coverage,
            self.modes,
            self.mass_err_max,
            self.mass_err_mean,
            self.precision,
            self.precision_expected,
            self.std_ratio,
            self.sliced_w2,
            self.sliced_w2_floor,
            self.cross_entropy,
            self.cross_entropy_exact,
            self.frame_consistency
        )
    }
}

/// All metrics with default options (128 projections, `EVAL_SEED`).
pub fn quality(gmm: &Gmm, samples: &Tensor, class: Option<usize>) -> QualityReport {
    quality_with(gmm, samples, class, &EvalOptions::default())
}

/// All metrics. The exact reference sets have the same size as `samples`.
pub fn quality_with(
    gmm: &Gmm,
    samples: &Tensor,
    class: Option<usize>,
    opts: &EvalOptions,
) -> QualityReport {
    let n = samples.size()[0] as usize;
    let key = RngKey::new(opts.seed, 0, Lane::Other, Purpose::Eval);
    let proj_key = key.sub(0);
    let exact_a = gmm.sample(&key.sub(1), n.max(1), class);
    let exact_b = gmm.sample(&key.sub(2), n.max(1), class);
    let (mass_err_max, mass_err_mean) = mass_error(gmm, samples, class);
    QualityReport {
        n,
        class,
        modes: gmm
            .component_weights(class)
            .iter()
            .filter(|&&w| w > 0.0)
            .count(),
        coverage: mode_coverage(gmm, samples, class),
        mass_err_max,
        mass_err_mean,
        precision: precision(gmm, samples, class),
        precision_expected: expected_precision(gmm.dim()),
        std_ratio: std_ratio(gmm, samples),
        sliced_w2: if n > 0 {
            sliced_w2(samples, &exact_a, opts.num_projections, &proj_key)
        } else {
            f64::NAN
        },
        sliced_w2_floor: sliced_w2(&exact_b, &exact_a, opts.num_projections, &proj_key),
        cross_entropy: cross_entropy(gmm, samples, class),
        cross_entropy_exact: cross_entropy(gmm, &exact_a, class),
        frame_consistency: frame_consistency(gmm, samples),
    }
}
