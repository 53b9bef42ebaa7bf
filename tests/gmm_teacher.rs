//! The teacher's exact Euler sampler: many steps reproduce the mixture, one step collapses to
//! its mean; CFG has its exact meaning.

use stillflow::eval;
use stillflow::models::gmm::Gmm;
use stillflow::models::toy_text::ToyTextEncoder;
use stillflow::rng::{Lane, Purpose, RngKey};
use tch::Kind;

fn key(sub: u64) -> RngKey {
    RngKey::new(5, 0, Lane::Other, Purpose::Test).sub(sub)
}

#[test]
fn euler_grid_endpoints_and_shift() {
    let g = Gmm::euler_grid(4, 1.0);
    assert_eq!(g, vec![1.0, 0.75, 0.5, 0.25, 0.0]);
    let g3 = Gmm::euler_grid(4, 3.0);
    assert_eq!((g3[0], g3[4]), (1.0, 0.0));
    // σ = 3u/(1 + 2u) at u = 0.5: 0.75.
    assert!((g3[2] - 0.75).abs() < 1e-15);
}

#[test]
fn fifty_steps_cover_the_ring_one_step_collapses() {
    let g = Gmm::ring(8, 4.0, 0.25, 1).unwrap();
    let n = 3000;
    let uncond = g.class_cond(&[None]);
    let x = g.teacher_sample(&key(1), n, 50, 3.0, &uncond);
    let r = eval::quality(&g, &x, None);
    println!("50 steps: {r}");
    assert_eq!(r.coverage, 1.0, "{r}");
    assert!(r.mass_err_max < 0.03, "{r}");
    assert!(r.sliced_w2 < 2.0 * r.sliced_w2_floor.max(0.1), "{r}");
    assert!((r.std_ratio - 1.0).abs() < 0.15, "{r}");
    assert!(r.precision > 0.95, "{r}");

    // One Euler step from σ = 1 lands on E[x0 | x, σ=1] = the mixture mean (0) for every sample.
    let x1 = g.teacher_sample(&key(1), n, 1, 3.0, &uncond);
    let spread = f64::try_from(x1.to_kind(Kind::Double).abs().max()).unwrap();
    assert!(spread < 1e-9, "1-step samples spread {spread}");
    let r1 = eval::quality(&g, &x1, None);
    println!(" 1 step : {r1}");
    // All samples sit at the centre, equidistant from every mode: round-off picks the "nearest"
    // one, so at most a few modes receive mass and none of it is precise or spread.
    assert!(r1.coverage < 0.5 && r1.mass_err_max > 0.3, "{r1}");
    assert_eq!(r1.precision, 0.0, "{r1}");
    assert!(r1.std_ratio < 1e-6, "{r1}");
    // A point mass at 0 against the ring: every projection has W2² = E[(θ·x)²] = r²/2 + s².
    let expect = (8.0f64 + 0.0625).sqrt();
    assert!((r1.sliced_w2 - expect).abs() < 0.1, "{r1} vs {expect}");
    // Few steps are in between: better than 1, worse than 50.
    let x4 = g.teacher_sample(&key(1), n, 4, 3.0, &uncond);
    let r4 = eval::quality(&g, &x4, None);
    println!(" 4 steps: {r4}");
    assert!(
        r4.sliced_w2 < r1.sliced_w2 && r4.sliced_w2 > r.sliced_w2,
        "{r4}"
    );
}

#[test]
fn class_prompt_and_cfg_have_exact_meaning() {
    let g = Gmm::ring(8, 4.0, 0.25, 4).unwrap();
    let enc = ToyTextEncoder::new(4, 2, 8);
    let n = 1500;
    let cond = enc.encode(&["class 3".to_string()]);
    let uncond = enc.encode(&[String::new()]);
    let x = g.teacher_sample(&key(2), n, 40, 3.0, &cond);
    let r = eval::quality(&g, &x, Some(3));
    println!("class 3: {r}");
    assert_eq!(r.coverage, 1.0, "{r}");
    assert!(r.mass_err_max < 0.05, "{r}");
    assert!(r.precision > 0.95, "{r}");
    // Guidance 0 is the conditional sampler itself.
    let x0 = g.teacher_sample_cfg(&key(2), n, 40, 3.0, &cond, Some((&uncond, 0.0)));
    let d = f64::try_from((&x0 - &x).abs().max()).unwrap();
    assert!(d < 1e-6, "{d}");
    // Strong guidance pushes samples away from the other classes: all land on class-3 modes,
    // and none of them on the other classes' modes.
    let xg = g.teacher_sample_cfg(&key(2), n, 40, 3.0, &cond, Some((&uncond, 3.0)));
    let counts = eval::mode_counts(&g, &xg);
    let off: usize = (0..8)
        .filter(|&k| g.classes()[k] != 3)
        .map(|k| counts[k])
        .sum();
    assert_eq!(off, 0, "{counts:?}");
}
