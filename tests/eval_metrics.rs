//! Quality metrics on distributions with known answers.

use stillflow::eval::{self, QualityReport};
use stillflow::models::gmm::Gmm;
use stillflow::rng::{Lane, Purpose, RngKey};
use tch::{Device, Kind, Tensor};

fn key(sub: u64) -> RngKey {
    RngKey::new(9, 0, Lane::Other, Purpose::Test).sub(sub)
}

const N: usize = 8000;

fn ring() -> Gmm {
    // 8 modes, radius 4, std 0.25, 4 classes of 2 adjacent modes.
    Gmm::ring(8, 4.0, 0.25, 4).unwrap()
}

#[test]
fn exact_samples_score_as_exact() {
    let g = ring();
    let x = g.sample(&key(1), N, None);
    let r = eval::quality(&g, &x, None);
    println!("{r}");
    assert_eq!(r.modes, 8);
    assert_eq!(r.coverage, 1.0);
    // Multinomial noise: sd of p̂_k is √(π(1−π)/N) = 0.0037; max over 8 within 4 sd.
    assert!(
        r.mass_err_max < 4.0 * (0.125f64 * 0.875 / N as f64).sqrt(),
        "{r}"
    );
    // Precision for exact samples in D = 2 is P(χ²_2 ≤ 8) = 1 − e⁻⁴ = 0.98168.
    assert!((r.precision_expected - (1.0 - (-4.0f64).exp())).abs() < 1e-12);
    assert!((r.precision - r.precision_expected).abs() < 0.006, "{r}");
    assert!((r.std_ratio - 1.0).abs() < 0.02, "{r}");
    // "≈ 0" means: within the floor's range (two independent exact sets of the same size). The
    // floor is dominated by multinomial mass fluctuations between modes 3 units apart
    // (W2 ~ distance·√Δp): measured 0.124 here, 3 % of the radius.
    assert!(
        r.sliced_w2 < 2.5 * r.sliced_w2_floor && r.sliced_w2 < 0.2,
        "{r}"
    );
    assert!(r.sliced_w2_floor < 0.2, "{r}");
    // Entropy of well-separated modes: ln 8 + ln(2πe·s²) (D = 2), to MC precision.
    let h = 8f64.ln() + (2.0 * std::f64::consts::PI * std::f64::consts::E * 0.0625).ln();
    assert!((r.cross_entropy - h).abs() < 0.05, "{r} vs entropy {h}");
    assert!(
        (r.cross_entropy_exact - h).abs() < 0.05,
        "{r} vs entropy {h}"
    );
    assert_eq!(r.frame_consistency, 1.0);
    // Class-conditional exact samples score as exact against their class.
    let xc = g.sample(&key(2), N, Some(2));
    let rc = eval::quality(&g, &xc, Some(2));
    assert_eq!(rc.modes, 2);
    assert_eq!(rc.coverage, 1.0);
    assert!(rc.mass_err_max < 4.0 * (0.25f64 / N as f64).sqrt(), "{rc}");
    // ... and as "half the mass on 2 of 8 modes" against the whole mixture.
    let ru = eval::quality(&g, &xc, None);
    assert_eq!(ru.coverage, 0.25);
    assert!((ru.mass_err_max - 0.375).abs() < 0.03, "{ru}");
}

#[test]
fn half_the_modes_gives_half_coverage() {
    let g = ring();
    // Classes 0 and 1 own modes 0..4: an equal mix of both class-conditional sets.
    let x = Tensor::cat(
        &[
            g.sample(&key(3), N / 2, Some(0)),
            g.sample(&key(4), N / 2, Some(1)),
        ],
        0,
    );
    assert_eq!(eval::mode_coverage(&g, &x, None), 0.5);
    let (max, mean) = eval::mass_error(&g, &x, None);
    // Modes 0..4 get 1/4 instead of 1/8, modes 4..8 get 0: every error is 1/8.
    assert!(
        (max - 0.125).abs() < 0.015 && (mean - 0.125).abs() < 0.002,
        "{max} {mean}"
    );
    // Still all precise, still the right width.
    assert!(eval::precision(&g, &x, None) > 0.97);
    assert!((eval::std_ratio(&g, &x) - 1.0).abs() < 0.03);
}

#[test]
fn scaled_and_collapsed_samples_give_known_std_ratio() {
    let g = ring();
    let (x, comps) = g.sample_labeled(&key(5), N, None);
    let idx = Tensor::from_slice(&comps.iter().map(|&k| k as i64).collect::<Vec<_>>());
    let mu = g.means().index_select(0, &idx).view([N as i64, 1, 2, 1, 1]);
    let x = x.to_kind(Kind::Double);
    let wide = &mu + (&x - &mu) * 2.0;
    let sr = eval::std_ratio(&g, &wide);
    assert!((sr - 2.0).abs() < 0.05, "std ratio {sr}");
    // Twice as wide: precision is P(χ²_2 ≤ 8/4) = 1 − e⁻¹ = 0.632.
    let p = eval::precision(&g, &wide, None);
    assert!((p - (1.0 - (-1.0f64).exp())).abs() < 0.02, "precision {p}");
    let half = &mu + (&x - &mu) * 0.5;
    assert!((eval::std_ratio(&g, &half) - 0.5).abs() < 0.02);
    // Collapsed onto the means: no spread, perfectly precise, cross-entropy far below entropy.
    let r = eval::quality(&g, &mu, None);
    assert!(r.std_ratio < 1e-9, "{r}");
    assert_eq!(r.precision, 1.0);
    assert!(r.cross_entropy < r.cross_entropy_exact - 0.9, "{r}");
}

#[test]
fn sliced_w2_of_a_shift() {
    let pk = key(100);
    // 1-D: every projection is ±1, so SW2 of a shift by δ is exactly |δ|.
    let g1 = Gmm::new(
        [1, 1, 1, 1],
        &Tensor::from_slice(&[1.0f64]).view([1, 1]),
        vec![1.0],
        vec![1.0],
        vec![0],
        0,
    )
    .unwrap();
    let a = g1.sample(&key(6), 4000, None).to_kind(Kind::Double);
    let sw = eval::sliced_w2(&(&a + 0.7), &a, 16, &pk);
    assert!((sw - 0.7).abs() < 1e-9, "{sw}");
    // Against an independent exact set: the triangle inequality of the (sliced) W2 metric gives
    // |SW2(a + δ, b) − |δ|| ≤ SW2(a, b) = the floor.
    let b = g1.sample(&key(7), 4000, None);
    let floor = eval::sliced_w2(&a, &b, 16, &pk);
    let sw = eval::sliced_w2(&(&a + 0.7), &b, 16, &pk);
    assert!(floor < 0.06, "floor {floor}");
    assert!((sw - 0.7).abs() <= floor + 1e-12, "{sw} (floor {floor})");
    // 2-D: SW2 = ‖δ‖·sqrt(mean_p (θ_p·δ̂)²) for the fixed directions, ≈ ‖δ‖/√2.
    let g = ring();
    let x = g.sample(&key(8), 3000, None).to_kind(Kind::Double);
    let delta = Tensor::from_slice(&[0.6f64, 0.8]).view([1, 1, 2, 1, 1]);
    let theta = eval::projections(2, 128, &pk);
    let dir = Tensor::from_slice(&[0.6f64, 0.8]).view([1, 2]);
    let c2 = f64::try_from(dir.matmul(&theta).square().mean(Kind::Double)).unwrap();
    let sw = eval::sliced_w2(&(&x + &delta), &x, 128, &pk);
    assert!((sw - c2.sqrt()).abs() < 1e-9, "{sw} vs {}", c2.sqrt());
    assert!((sw - 0.5f64.sqrt()).abs() < 0.08, "{sw}");
    // Different set sizes work (quantile matching): a set against itself duplicated is exactly 0;
    // against a third of itself it is small (≈ the floor of 1000 samples).
    let twice = Tensor::cat(&[&x, &x], 0);
    assert!(eval::sliced_w2(&twice, &x, 64, &pk) < 1e-12);
    let sub = x.narrow(0, 0, 1000);
    assert!(eval::sliced_w2(&x, &sub, 64, &pk) < 0.5);
}

#[test]
fn imbalanced_mass_error_and_frame_consistency() {
    let g = Gmm::imbalanced(8, 4.0, 0.25, 1, 10.0).unwrap();
    let r = eval::quality(&g, &g.sample(&key(9), N, None), None);
    assert_eq!(r.coverage, 1.0);
    assert!(r.mass_err_max < 0.02, "{r}");
    // Uniform-weight samples against the imbalanced truth: the heaviest mode is off by
    // π_7 − 1/8, and the lightest mode still counts as covered only if 1/8 ≥ π_0/2.
    let u = ring().sample(&key(10), N, None);
    let (max, _) = eval::mass_error(&g, &u, None);
    let w = g.weights();
    assert!(
        (max - (w[7] - 0.125)).abs() < 0.015,
        "{max} vs {}",
        w[7] - 0.125
    );
    // Video-shaped mixture: exact samples keep one mode across frames; splicing frame 0 of one
    // sample onto the later frames of a sample from another mode breaks it.
    let v = Gmm::procedural(4, 2, 4, 4, 6, 2, 0.2, 1.0, 5).unwrap();
    let (xs, comps) = v.sample_labeled(&key(11), 200, None);
    assert_eq!(eval::frame_consistency(&v, &xs), 1.0);
    let rv = eval::quality(&v, &xs, None);
    assert!((rv.precision - rv.precision_expected).abs() < 0.03, "{rv}");
    let shifted = xs.roll([1i64].as_slice(), [0i64].as_slice()); // sample i−1
    let spliced = Tensor::cat(&[xs.narrow(1, 0, 1), shifted.narrow(1, 1, 3)], 1);
    let differ = (0..200)
        .filter(|&i| comps[i] != comps[(i + 199) % 200])
        .count() as f64
        / 200.0;
    let fc = eval::frame_consistency(&v, &spliced);
    assert!(
        (fc - (1.0 - differ)).abs() < 1e-12,
        "{fc} vs {}",
        1.0 - differ
    );
    assert!(eval::precision(&v, &spliced, None) < 1.0 - differ + 0.03);
}

#[test]
fn report_serialises_and_prints_one_line() {
    let g = ring();
    let r = eval::quality(&g, &g.sample(&key(12), 500, Some(1)), Some(1));
    let json = serde_json::to_string(&r).unwrap();
    let back: QualityReport = serde_json::from_str(&json).unwrap();
    assert_eq!((back.n, back.class, back.modes), (r.n, r.class, r.modes));
    for (a, b) in [
        (back.coverage, r.coverage),
        (back.precision, r.precision),
        (back.sliced_w2, r.sliced_w2),
        (back.cross_entropy, r.cross_entropy),
    ] {
        assert!((a - b).abs() <= 1e-15 * b.abs().max(1.0), "{a} vs {b}");
    }
    let line = r.to_string();
    assert!(!line.contains('\n'));
    assert!(
        line.contains("coverage=1.000") && line.contains("class=1"),
        "{line}"
    );
    let _ = Device::Cpu;
}
