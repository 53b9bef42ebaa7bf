//! The 2-D ring and imbalanced mixtures embedded in the video latent (`toy.kind: ring |
//! imbalanced`, `zoo::embed_in_latent`): the frame is orthonormal, the embedded mixture is exact
//! (its denoiser projects onto the 2-D one) and exact samples score as exact on every metric.

use stillflow::actors::zoo::{self, embedding_frame, IMBALANCE_RATIO};
use stillflow::config::{self, LoadOptions};
use stillflow::eval;
use stillflow::models::gmm::Gmm;
use stillflow::rng::{Lane, Purpose, RngKey};
use tch::{Device, Kind, Tensor};

const N: usize = 4000;

fn key(sub: u64) -> RngKey {
    RngKey::new(11, 0, Lane::Other, Purpose::Test).sub(sub)
}

/// The toy mixture of `toy_dmd` (latent [4, 4, 2, 2], D = 64) with `toy.kind = kind`, the
/// benchmark's ring settings: radius 3, std 0.15, one class (the unconditional mixture).
fn toy(kind: &str) -> Gmm {
    let cfg = config::load(&LoadOptions {
        configs: vec!["toy_dmd".into()],
        sets: vec![
            format!("toy.kind={kind}"),
            "toy.num_classes=1".into(),
            "toy.mode_scale=3.0".into(),
        ],
        env: vec![],
        default_when_empty: false,
    })
    .expect("toy_dmd loads")
    .config;
    zoo::toy_gmm(&cfg).expect("toy builds")
}

fn max_abs(t: &Tensor) -> f64 {
    f64::try_from(t.abs().max()).unwrap()
}

#[test]
fn frame_is_orthonormal_with_equal_share_per_video_frame() {
    let q = embedding_frame([4, 4, 2, 2], 2, 1234).unwrap();
    assert_eq!(q.size(), vec![64, 2]);
    let eye = Tensor::eye(2, (Kind::Double, Device::Cpu));
    assert!(max_abs(&(q.tr().matmul(&q) - &eye)) < 1e-12);
    for f in 0..4 {
        let qf = q.narrow(0, 16 * f, 16);
        assert!(
            max_abs(&(qf.tr().matmul(&qf) - &eye / 4.0)) < 1e-12,
            "frame {f}"
        );
    }
    // Keyed: the same seed gives the same frame, another seed another one.
    let same = embedding_frame([4, 4, 2, 2], 2, 1234).unwrap();
    assert_eq!(max_abs(&(&q - same)), 0.0);
    let other = embedding_frame([4, 4, 2, 2], 2, 1235).unwrap();
    assert!(max_abs(&(&q - other)) > 0.1);
    // A mixture that does not fit one frame is an error, not a panic.
    let err = embedding_frame([4, 1, 1, 1], 2, 1).unwrap_err();
    assert!(format!("{err:#}").contains("does not fit"), "{err:#}");
}

#[test]
fn embedded_ring_keeps_the_geometry_and_the_exact_denoiser() {
    let g = toy("ring");
    let low = Gmm::ring(8, 3.0, 0.15, 1).unwrap();
    assert_eq!(g.shape(), [4, 4, 2, 2]);
    assert_eq!(g.num_components(), 8);
    assert_eq!(g.stds(), low.stds());
    // Pairwise mean distances are the 2-D ring's (the frame is an isometry).
    let gram = |m: &Tensor| m.matmul(&m.tr());
    assert!(max_abs(&(gram(g.means()) - gram(low.means()))) < 1e-12);
    // Qᵀ E[x0 | x_t] = E_2d[x0 | Qᵀ x_t]: the orthogonal dims carry the same likelihood for every
    // component (same std), so the responsibilities are the 2-D ones.
    let q = embedding_frame([4, 4, 2, 2], 2, 1234).unwrap();
    let b = 64;
    let x0 = g.sample(&key(1), b, None).to_kind(Kind::Double);
    let eps = stillflow::rng::randn(&key(2), &[b as i64, 4, 4, 2, 2], Kind::Double, Device::Cpu);
    let sigma = Tensor::from_slice(
        &(0..b)
            .map(|i| 0.05 + 0.9 * i as f64 / b as f64)
            .collect::<Vec<_>>(),
    );
    let s5 = sigma.view([b as i64, 1, 1, 1, 1]);
    let xt = &x0 * (1.0 - &s5) + eps * &s5;
    let cond = g.class_cond(&vec![None; b]);
    let hi = g.x0_at_sigma_f64(&xt, &sigma, &cond).unwrap();
    let proj = |x: &Tensor| x.reshape([b as i64, 64]).matmul(&q);
    let lo_in = proj(&xt).view([b as i64, 1, 2, 1, 1]);
    let lo = low.x0_at_sigma_f64(&lo_in, &sigma, &cond).unwrap();
    let diff = max_abs(&(proj(&hi) - lo.view([b as i64, 2])));
    assert!(diff < 1e-9, "projected posterior mean differs by {diff}");
}

#[test]
fn exact_samples_of_the_embedded_ring_score_as_exact() {
    let g = toy("ring");
    let r = eval::quality(&g, &g.sample(&key(3), N, None), None);
    println!("{r}");
    assert_eq!(r.modes, 8);
    assert_eq!(r.coverage, 1.0);
    assert!(
        r.mass_err_max < 4.0 * (0.125f64 * 0.875 / N as f64).sqrt(),
        "{r}"
    );
    assert!((r.precision - r.precision_expected).abs() < 0.01, "{r}");
    assert!((r.std_ratio - 1.0).abs() < 0.02, "{r}");
    assert!(r.sliced_w2 < 2.5 * r.sliced_w2_floor, "{r}");
    // Entropy of well-separated isotropic modes in D = 64: ln 8 + (D/2)·ln(2πe·s²).
    let h = 8f64.ln() + 32.0 * (2.0 * std::f64::consts::PI * std::f64::consts::E * 0.0225).ln();
    assert!((r.cross_entropy - h).abs() < 0.3, "{r} vs entropy {h}");
    // Per frame the modes are 3·2·sin(π/8)/√4 = 1.15 apart, 7.7 stds: no frame flips mode.
    assert!(r.frame_consistency > 0.998, "{r}");
}

#[test]
fn embedded_imbalanced_mixture_has_its_weights_and_scores_as_exact() {
    let g = toy("imbalanced");
    let w = g.weights();
    let (lo, hi) = (
        w.iter().cloned().fold(1.0, f64::min),
        w.iter().cloned().fold(0.0, f64::max),
    );
    assert!((hi / lo - IMBALANCE_RATIO).abs() < 1e-9, "weights {w:?}");
    let x = g.sample(&key(4), N, None);
    let r = eval::quality(&g, &x, None);
    println!("{r}");
    assert_eq!(r.coverage, 1.0);
    let sd = (hi * (1.0 - hi) / N as f64).sqrt();
    assert!(r.mass_err_max < 4.0 * sd, "{r}");
    assert!((r.std_ratio - 1.0).abs() < 0.02, "{r}");
    assert!(r.sliced_w2 < 2.5 * r.sliced_w2_floor, "{r}");
    // Dropping the lightest mode costs its whole mass: coverage 7/8, mass error ≥ its weight.
    let keep: Vec<i64> = g
        .mode_of(&x)
        .iter()
        .enumerate()
        .filter(|(_, &k)| k != 0)
        .map(|(i, _)| i as i64)
        .collect();
    let dropped = x.index_select(0, &Tensor::from_slice(&keep));
    let rd = eval::quality(&g, &dropped, None);
    assert_eq!(rd.coverage, 7.0 / 8.0, "{rd}");
    assert!(rd.mass_err_max >= lo - 4.0 * sd, "{rd}");
}
