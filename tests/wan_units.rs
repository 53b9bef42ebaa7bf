//! Wan units: RoPE / time embedding against hand-computed numbers, presets, init, weight-loading
//! errors, the Denoiser impl and bf16.

use stillflow::models::wan::rope::{apply_rope, rope_tables, sinusoidal_embedding};
use stillflow::models::wan::{build_random, load_or_build, WanConfig, WanModel};
use stillflow::models::weights::{copy_into_varstore, load_named_tensors, strip_wrapper_prefixes};
use stillflow::models::Denoiser;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

fn v(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).contiguous().view(-1)).unwrap()
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[test]
fn rope_split_follows_wan() {
    let c = |heads| WanConfig {
        num_heads: heads,
        ..WanConfig::t2v_1_3b()
    };
    assert_eq!(WanConfig::t2v_1_3b().rope_split(), [44, 42, 42]);
    assert_eq!(WanConfig::t2v_14b().rope_split(), [44, 42, 42]);
    assert_eq!(c(48).rope_split(), [12, 10, 10]); // head_dim 32: 2·⌊32/6⌋ = 10
    assert_eq!(WanConfig::tiny(32, 2, 2, 64, 4, 16).rope_split(), [8, 4, 4]);
}

#[test]
fn rope_tables_hand_computed() {
    // grid (f=2, h=3, w=1), frames start at 3, head_dim 20 split t/h/w = 8/6/6 real dims.
    let (cos, sin) = rope_tables([2, 3, 1], 3, [8, 6, 6], Device::Cpu);
    assert_eq!(cos.size(), vec![6, 1, 10]);
    let c5 = v(&cos.get(5)); // token (f=1, h=2, w=0): t pos 4, h pos 2, w pos 0
    let s5 = v(&sin.get(5));
    assert!(close(c5[1], 0.921_060_994_002_885_1, 1e-7)); // cos(4·10000^(−2/8)) = cos 0.4
    assert!(close(c5[3], 0.999_992_000_010_666_7, 1e-7)); // cos 0.004
    assert!(close(s5[5], 0.092_698_500_778_727_24, 1e-7)); // sin(2·10000^(−2/6))
    assert!(close(c5[7], 1.0, 0.0) && close(s5[9], 0.0, 0.0)); // w pos 0
    let c0 = v(&cos.get(0));
    assert!(close(c0[0], -0.989_992_496_600_445_4, 1e-7)); // cos 3 (frame offset 3)
}

#[test]
fn apply_rope_rotates_adjacent_pairs_and_is_relative() {
    tch::manual_seed(0);
    let x = Tensor::randn([1, 6, 2, 20], (Kind::Float, Device::Cpu));
    let (cos, sin) = rope_tables([2, 3, 1], 0, [8, 6, 6], Device::Cpu);
    let r = v(&apply_rope(&x, &cos, &sin));
    let (xv, cv, sv) = (v(&x), v(&cos), v(&sin));
    for n in 0..6 {
        for h in 0..2 {
            for i in 0..10 {
                let base = (n * 2 + h) * 20 + 2 * i;
                let (a, b) = (xv[base], xv[base + 1]);
                let (c, s) = (cv[n * 10 + i], sv[n * 10 + i]);
                assert!(close(r[base], a * c - b * s, 1e-6));
                assert!(close(r[base + 1], a * s + b * c, 1e-6));
            }
        }
    }
    // q·k depends on the frame difference only: shifting both by 5 frames keeps it.
    let q = Tensor::randn([1, 6, 1, 20], (Kind::Float, Device::Cpu));
    let k = Tensor::randn([1, 6, 1, 20], (Kind::Float, Device::Cpu));
    let dots = |start| {
        let (c, s) = rope_tables([2, 3, 1], start, [8, 6, 6], Device::Cpu);
        let (qr, kr) = (apply_rope(&q, &c, &s), apply_rope(&k, &c, &s));
        qr.squeeze().matmul(&kr.squeeze().tr())
    };
    let (a, b) = (dots(0), dots(5));
    assert!((a - b).abs().max().double_value(&[]) < 1e-4);
}

#[test]
fn sinusoid_hand_computed() {
    let t = Tensor::from_slice(&[500.0f32, 0.0]);
    let e = sinusoidal_embedding(8, &t);
    assert_eq!(e.kind(), Kind::Double);
    let r = v(&e.get(0));
    let want = [
        -0.883_849_273_431_478,
        0.964_966_028_492_113_3,
        0.283_662_185_463_226_25,
        0.877_582_561_890_372_8,
        -0.467_771_805_322_476_14,
        -0.262_374_853_703_928_77,
        -0.958_924_274_663_138_5,
        0.479_425_538_604_203,
    ];
    for (a, b) in r.iter().zip(want) {
        assert!(close(*a, b, 1e-9), "{a} vs {b}");
    }
    assert_eq!(v(&e.get(1)), vec![1., 1., 1., 1., 0., 0., 0., 0.]);
}

#[test]
fn presets_and_param_counts() {
    let small = WanConfig::preset("wan2.1-t2v-1.3b").unwrap();
    assert_eq!(
        (small.dim, small.ffn_dim, small.num_heads, small.num_layers),
        (1536, 8960, 12, 30)
    );
    assert_eq!(
        (small.text_dim, small.text_len, small.freq_dim, small.in_dim),
        (4096, 512, 256, 16)
    );
    let big = WanConfig::preset("wan2.1-t2v-14b").unwrap();
    assert_eq!(
        (big.dim, big.ffn_dim, big.num_heads, big.num_layers),
        (5120, 13824, 40, 40)
    );
    // Wan2.1 is "1.3B" / "14B": 1.42e9 and 14.29e9 parameters.
    assert!(
        (1.3e9..1.5e9).contains(&(small.num_params() as f64)),
        "{}",
        small.num_params()
    );
    assert!(
        (14.0e9..14.5e9).contains(&(big.num_params() as f64)),
        "{}",
        big.num_params()
    );
    // The count matches the VarStore of a tiny model.
    let c = WanConfig::tiny(32, 2, 2, 64, 4, 16);
    let vs = VarStore::new(Device::Cpu);
    let _m = WanModel::new(&vs.root(), c.clone()).unwrap();
    let n: i64 = vs.variables().values().map(|t| t.numel() as i64).sum();
    assert_eq!(n, c.num_params());
    let err = load_or_build("no-such-model", Device::Cpu, Kind::Float)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("wan2.1-t2v-1.3b"), "{err}");
}

#[test]
fn random_init_follows_wan_and_fresh_model_predicts_zero() {
    let c = WanConfig::tiny(64, 2, 4, 128, 4, 96);
    let (vs, m) = build_random(c.clone(), Device::Cpu, Kind::Float, 7).unwrap();
    let vars = vs.variables();
    let std = |n: &str| vars[n].std(true).double_value(&[]);
    let absmax = |n: &str| vars[n].abs().max().double_value(&[]);
    assert!((std("text_embedding.0.weight") - 0.02).abs() < 0.002);
    assert!((std("time_embedding.2.weight") - 0.02).abs() < 0.002);
    let bound = (6.0f64 / (64.0 + 64.0)).sqrt();
    let q = "blocks.1.self_attn.q.weight";
    assert!(absmax(q) <= bound && absmax(q) > 0.9 * bound);
    assert!((std(q) - bound / 3f64.sqrt()).abs() < 0.1 * bound);
    assert!((std("blocks.0.modulation") - 1.0 / 8.0).abs() < 0.02);
    assert_eq!(absmax("head.head.weight"), 0.0);
    assert_eq!(absmax("blocks.0.ffn.0.bias"), 0.0);
    assert_eq!(
        vars["blocks.0.cross_attn.norm_k.weight"]
            .min()
            .double_value(&[]),
        1.0
    );
    // Keyed draws: same seed, same weights; other seed, other weights.
    let (vs2, _) = build_random(c.clone(), Device::Cpu, Kind::Float, 7).unwrap();
    let (vs3, _) = build_random(c, Device::Cpu, Kind::Float, 8).unwrap();
    assert!(vars[q].equal(&vs2.variables()[q]));
    assert!(!vars[q].equal(&vs3.variables()[q]));
    // Wan zero-initialises the head: the untrained flow is exactly 0 (= head bias).
    tch::manual_seed(1);
    let x = Tensor::randn([1, 6, 4, 4, 4], (Kind::Float, Device::Cpu));
    let t = Tensor::full([1, 6], 500.0, (Kind::Float, Device::Cpu));
    let cond = Tensor::randn([1, 3, 96], (Kind::Float, Device::Cpu));
    let out = m.flow(&x, &t, &cond);
    assert_eq!(out.size(), x.size());
    assert_eq!(out.abs().max().double_value(&[]), 0.0);
}

fn fixture_model() -> (VarStore, WanModel, Vec<(String, Tensor)>) {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let all = load_named_tensors(&dir.join("wan_tiny.safetensors")).unwrap();
    let cfg = WanConfig::from_json_file(&dir.join("wan_tiny.json")).unwrap();
    let vs = VarStore::new(Device::Cpu);
    let m = WanModel::new(&vs.root(), cfg).unwrap();
    (vs, m, all)
}

#[test]
fn weight_errors_list_everything_at_once() {
    let (vs, _m, all) = fixture_model();
    let mut w: Vec<(String, Tensor)> = all
        .into_iter()
        .filter(|(n, _)| !n.starts_with("io."))
        .collect();
    w.retain(|(n, _)| n != "blocks.0.self_attn.norm_q.weight" && n != "head.modulation");
    w.push((
        "blocks.0.self_attn.qq.weight".into(),
        Tensor::zeros([2], (Kind::Float, Device::Cpu)),
    ));
    for (n, t) in w.iter_mut() {
        if n == "blocks.1.ffn.0.weight" {
            *t = Tensor::zeros([64, 41], (Kind::Float, Device::Cpu));
        }
    }
    let before = vs.variables()["patch_embedding.weight"].copy();
    let err = copy_into_varstore(&vs, &w, "my_ckpt.safetensors")
        .err()
        .unwrap()
        .to_string();
    for s in [
        "my_ckpt.safetensors",
        "missing: blocks.0.self_attn.norm_q.weight",
        "missing: head.modulation",
        "unexpected: blocks.0.self_attn.qq.weight",
        "mis-shaped: blocks.1.ffn.0.weight: expected [64, 40], found [64, 41]",
    ] {
        assert!(err.contains(s), "{s:?} not in:\n{err}");
    }
    // Nothing was copied.
    assert!(vs.variables()["patch_embedding.weight"].equal(&before));
    assert_eq!(
        strip_wrapper_prefixes("model._fsdp_wrapped_module.blocks.0.a"),
        "blocks.0.a"
    );
    assert_eq!(
        strip_wrapper_prefixes("head.head.weight"),
        "head.head.weight"
    );
}

#[test]
fn corrupt_and_truncated_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let src = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/wan_tiny.safetensors");
    let bytes = std::fs::read(&src).unwrap();
    let trunc = dir.path().join("trunc.safetensors");
    std::fs::write(&trunc, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_named_tensors(&trunc).err().unwrap().to_string();
    assert!(
        e.contains("trunc.safetensors") && e.contains("corrupt or truncated"),
        "{e}"
    );
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"this is not a safetensors file at all").unwrap();
    let e = load_named_tensors(&junk).err().unwrap().to_string();
    assert!(e.contains("junk.safetensors"), "{e}");
    let tiny = dir.path().join("tiny.safetensors");
    std::fs::write(&tiny, b"abc").unwrap();
    assert!(load_named_tensors(&tiny)
        .err()
        .unwrap()
        .to_string()
        .contains("truncated"));
    let e = load_named_tensors(&dir.path().join("absent.safetensors"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("absent.safetensors"), "{e}");
    // A folder without weights.
    std::fs::copy(
        src.with_file_name("wan_tiny.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let sub = tempfile::tempdir().unwrap();
    std::fs::copy(
        src.with_file_name("wan_tiny.json"),
        sub.path().join("config.json"),
    )
    .unwrap();
    let e = load_or_build(sub.path().to_str().unwrap(), Device::Cpu, Kind::Float)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("no *.safetensors"), "{e}");
}

#[test]
fn bf16_model_tracks_f32() {
    let (mut vs, m, all) = fixture_model();
    let (io, w): (Vec<_>, Vec<_>) = all.into_iter().partition(|(n, _)| n.starts_with("io."));
    copy_into_varstore(&vs, &w, "fixture").unwrap();
    let get = |k: &str| io.iter().find(|(n, _)| n == k).unwrap().1.shallow_clone();
    let (x, t, c, want) = (
        get("io.x"),
        get("io.t_frame"),
        get("io.context"),
        get("io.out_frame"),
    );
    vs.set_kind(Kind::BFloat16);
    assert_eq!(m.kind(), Kind::BFloat16);
    let out = tch::no_grad(|| m.flow(&x.to_kind(Kind::BFloat16), &t, &c));
    assert_eq!(out.kind(), Kind::BFloat16);
    let out = out.to_kind(Kind::Float);
    let rel = (&out - &want).norm().double_value(&[]) / want.norm().double_value(&[]);
    eprintln!("bf16 vs diffusers f32: rel {rel:.3e}");
    assert!(rel < 3e-2, "{rel}");
    assert!(rel > 1e-5, "bf16 must actually round");
}
