//! Parity with diffusers' WanTransformer3DModel (fixture from scripts/make_wan_fixture.py).

use std::path::PathBuf;
use stillflow::models::wan::{load_or_build, WanConfig, WanModel};
use stillflow::models::weights::{copy_into_varstore, load_named_tensors};
use stillflow::models::Denoiser;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

struct Fixture {
    weights: Vec<(String, Tensor)>,
    io: std::collections::HashMap<String, Tensor>,
    cfg: WanConfig,
}

fn load_fixture() -> Fixture {
    let all = load_named_tensors(&fixture().join("wan_tiny.safetensors")).expect("fixture");
    let (io, weights): (Vec<_>, Vec<_>) = all.into_iter().partition(|(n, _)| n.starts_with("io."));
    let io = io
        .into_iter()
        .map(|(n, t)| (n[3..].to_string(), t))
        .collect();
    let cfg = WanConfig::from_json_file(&fixture().join("wan_tiny.json")).expect("config");
    Fixture { weights, io, cfg }
}

fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let d = (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .norm()
        .double_value(&[]);
    d / b.to_kind(Kind::Double).norm().double_value(&[])
}

fn build(fx: &Fixture) -> (VarStore, WanModel) {
    let vs = VarStore::new(Device::Cpu);
    let m = WanModel::new(&vs.root(), fx.cfg.clone()).unwrap();
    copy_into_varstore(&vs, &fx.weights, "wan_tiny fixture").unwrap();
    (vs, m)
}

#[test]
fn fixture_config_is_the_tiny_diffusers_one() {
    let fx = load_fixture();
    assert_eq!(fx.cfg.head_dim(), 20);
    assert_eq!(fx.cfg.rope_split(), [8, 6, 6]);
    let n: i64 = fx.weights.iter().map(|(_, t)| t.numel() as i64).sum();
    assert_eq!(n, fx.cfg.num_params());
}

#[test]
fn matches_diffusers_bidirectional() {
    let fx = load_fixture();
    let (vs, m) = build(&fx);
    let out = tch::no_grad(|| m.flow(&fx.io["x"], &fx.io["t"], &fx.io["context"]));
    let err = rel_err(&out, &fx.io["out"]);
    eprintln!("parity rel err (scalar t) = {err:.3e}");
    assert!(err <= 1e-4, "relative error {err}");
    // The test can fail: a perturbed weight moves the output well beyond the tolerance.
    let mut w = vs.variables()["blocks.1.cross_attn.norm_k.weight"].shallow_clone();
    tch::no_grad(|| {
        let _ = w.g_add_scalar_(0.05);
    });
    let out2 = tch::no_grad(|| m.flow(&fx.io["x"], &fx.io["t"], &fx.io["context"]));
    assert!(rel_err(&out2, &fx.io["out"]) > 1e-3);
}

#[test]
fn matches_diffusers_per_frame_timesteps() {
    let fx = load_fixture();
    let (_vs, m) = build(&fx);
    let out = tch::no_grad(|| m.forward(&fx.io["x"], &fx.io["t_frame"], &fx.io["context"]));
    let err = rel_err(&out, &fx.io["out_frame"]);
    eprintln!("parity rel err (per-frame t) = {err:.3e}");
    assert!(err <= 1e-4, "relative error {err}");
    // Per-frame t really differs from the scalar case.
    assert!(rel_err(&fx.io["out_frame"], &fx.io["out"]) > 1e-2);
}

#[test]
fn load_or_build_reads_a_wan_folder_with_prefixes() {
    let fx = load_fixture();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture().join("wan_tiny.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    // Two shards, FSDP-style prefixes on one of them.
    let (a, b) = fx.weights.split_at(fx.weights.len() / 2);
    let a: Vec<(String, Tensor)> = a
        .iter()
        .map(|(n, t)| (format!("model._fsdp_wrapped_module.{n}"), t.shallow_clone()))
        .collect();
    Tensor::write_safetensors(&a, dir.path().join("m-00001.safetensors")).unwrap();
    Tensor::write_safetensors(b, dir.path().join("m-00002.safetensors")).unwrap();
    let (_vs, m) = load_or_build(dir.path().to_str().unwrap(), Device::Cpu, Kind::Float).unwrap();
    let out = tch::no_grad(|| m.flow(&fx.io["x"], &fx.io["t"], &fx.io["context"]));
    assert!(rel_err(&out, &fx.io["out"]) <= 1e-4);
}
