//! DMD's regression loss (config key `regression_weight`, pipeline `self_forcing_regression`):
//! the loss's fixed point and gradient, the exact teacher's ODE targets (every mode with its mass,
//! the right spread at the default step count), that training with it lowers the regression error,
//! and the errors for a miswired run.

use stillflow::actors::zoo;
use stillflow::config::{self, LoadOptions, RunConfig};
use stillflow::eval;
use stillflow::losses::regression_loss;
use stillflow::rng::{self, Lane, Purpose, RngKey};
use stillflow::runtime::{train, RunOptions};
use tch::{Device, Kind, Tensor};

fn cfg(sets: &[&str]) -> RunConfig {
    config::load(&LoadOptions {
        configs: vec!["toy_dmd".into()],
        sets: sets.iter().map(|s| s.to_string()).collect(),
        env: vec![],
        default_when_empty: false,
    })
    .expect("config loads")
    .config
}

const IMBALANCED: [&str; 3] = [
    "toy.kind=imbalanced",
    "toy.num_classes=1",
    "toy.mode_scale=3.0",
];

#[test]
fn regression_loss_fixed_point_and_gradient() {
    let y = Tensor::randn([3, 4, 2, 1, 1], (Kind::Float, Device::Cpu));
    let l0 = regression_loss(&y, &y).unwrap();
    assert_eq!(l0.double_value(&[]), 0.0);
    let x = Tensor::randn([3, 4, 2, 1, 1], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let l = regression_loss(&x, &y).unwrap();
    let want = (x.to_kind(Kind::Double) - y.to_kind(Kind::Double))
        .square()
        .mean(Kind::Double)
        .double_value(&[]);
    assert!((l.double_value(&[]) - want).abs() < 1e-12);
    l.backward();
    let g = x.grad();
    let expect = (&x - &y).detach() * (2.0 / x.numel() as f64);
    let err = (g - expect).abs().max().double_value(&[]);
    assert!(err < 1e-7, "gradient off by {err}");
    let bad = Tensor::zeros([3, 4], (Kind::Float, Device::Cpu));
    let e = regression_loss(&x, &bad).unwrap_err().to_string();
    assert!(e.contains("shape"), "{e}");
}

#[test]
fn ode_targets_carry_every_mode_with_its_mass_and_spread() {
    let c = cfg(&IMBALANCED);
    let g = zoo::toy_gmm(&c).unwrap();
    let [f, ch, h, w] = g.shape();
    let n = 2048;
    let key = RngKey::new(3, 0, Lane::Other, Purpose::Test);
    let z = rng::randn(&key, &[n, f, ch, h, w], Kind::Float, Device::Cpu);
    let cond = g.class_cond(&[None]);
    let steps = c.regression_ode_steps as usize;
    let y = g.teacher_ode(&z, steps, 1.0, &cond, None).unwrap();
    assert_eq!(y.kind(), Kind::Double);
    let r = eval::quality(&g, &y.to_kind(Kind::Float), None);
    println!("ODE targets ({steps} steps, shift 1): {r}");
    assert_eq!(r.coverage, 1.0, "{r}");
    // Sampling noise of a mode's mass at n = 2048 is ≤ 0.011 (1σ).
    assert!(r.mass_err_max < 0.03, "{r}");
    assert!((r.std_ratio - 1.0).abs() < 0.03, "{r}");
    assert!(r.precision > 0.98, "{r}");
    // Why the default is not the 50-step shift-5 grid of the teacher rows: its last step from
    // σ ≈ 0.09 shrinks every mode to ≈ 0.76 of its std.
    let y50 = g.teacher_ode(&z, 50, 5.0, &cond, None).unwrap();
    let r50 = eval::quality(&g, &y50.to_kind(Kind::Float), None);
    assert!(r50.std_ratio < 0.8, "{r50}");
    // teacher_sample is this ODE from its own noise.
    let x = g.teacher_sample(&key, n as usize, 7, 3.0, &cond);
    let x2 = g.teacher_ode(&z, 7, 3.0, &cond, None).unwrap();
    let d = (x.to_kind(Kind::Double) - x2).abs().max().double_value(&[]);
    assert!(d < 1e-6, "teacher_sample differs from teacher_ode by {d}");
}

fn regression_losses(dir: &std::path::Path) -> Vec<f64> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).expect("metrics.jsonl");
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON"))
        .filter_map(|v| v["regression_loss"].as_f64())
        .collect()
}

fn run(weight: &str, dir: &std::path::Path) -> Vec<f64> {
    let logdir = format!("logdir={}", dir.display());
    let w = format!("regression_weight={weight}");
    let mut sets = IMBALANCED.to_vec();
    sets.extend([
        "pipeline=self_forcing_regression",
        "denoising_step_list=[1000]",
        "dfake_gen_update_ratio=1",
        "max_steps=120",
        "toy.eval_samples=64",
        "save_checkpoints=false",
        "progress=false",
        w.as_str(),
        logdir.as_str(),
    ]);
    train(
        cfg(&sets),
        &RunOptions {
            resume: false,
            quiet: true,
        },
    )
    .expect("trains");
    regression_losses(dir)
}

#[test]
fn training_with_the_regression_loss_lowers_the_regression_error() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let off = run("0", a.path());
    let on = run("100", b.path());
    assert_eq!(
        off.len(),
        120,
        "weight 0 still logs regression_loss every generator step"
    );
    assert_eq!(off[0], on[0], "same start (same seed, same first batch)");
    let tail = |v: &[f64]| v[v.len() - 20..].iter().sum::<f64>() / 20.0;
    let (t_off, t_on) = (tail(&off), tail(&on));
    println!(
        "regression_loss: start {:.3}, last 20 mean: weight 0 {t_off:.3}, weight 100 {t_on:.3}",
        on[0]
    );
    assert!(
        t_on < 0.5 * on[0],
        "weight 100 did not halve the error: {} -> {t_on}",
        on[0]
    );
    assert!(
        t_on < 0.8 * t_off,
        "weight 100 ({t_on}) not clearly below weight 0 ({t_off})"
    );
}

fn train_err(sets: &[&str]) -> String {
    let d = tempfile::tempdir().unwrap();
    let logdir = format!("logdir={}", d.path().display());
    let mut s = sets.to_vec();
    s.extend(["max_steps=2", "progress=false", logdir.as_str()]);
    let c = match config::load(&LoadOptions {
        configs: vec!["toy_dmd".into()],
        sets: s.iter().map(|x| x.to_string()).collect(),
        env: vec![],
        default_when_empty: false,
    }) {
        Ok(c) => c.config,
        Err(e) => return format!("{e:#}"),
    };
    let opts = RunOptions {
        resume: false,
        quiet: true,
    };
    format!("{:#}", train(c, &opts).expect_err("must fail"))
}

#[test]
fn miswired_regression_runs_fail_with_the_key() {
    let e = train_err(&["regression_weight=0.25"]);
    assert!(
        e.contains("regression_weight") && e.contains("self_forcing_regression"),
        "{e}"
    );
    let e = train_err(&["regression_weight=-1"]);
    assert!(e.contains("regression_weight"), "{e}");
    let e = train_err(&["regression_ode_steps=0"]);
    assert!(e.contains("regression_ode_steps"), "{e}");
    let e = train_err(&[
        "pipeline=self_forcing_regression",
        "regression_weight=0.25",
        "real_name=wan-tiny",
    ]);
    assert!(e.contains("ode_target") && e.contains("real_name"), "{e}");
}
