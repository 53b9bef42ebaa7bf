//! The Wan2.1 VAE: parity with diffusers' AutoencoderKLWan (fixture from
//! scripts/make_vae_fixture.py: Wan2.1's layout with base_dim 4, seeded random weights), both
//! weight formats, chunked (streaming) decode, and load errors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use stillflow::models::vae::{names, VaeConfig, WanVae};
use stillflow::models::weights::load_named_tensors;
use tch::{Device, Kind, Tensor};

fn fx() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vae")
}

fn io() -> HashMap<String, Tensor> {
    load_named_tensors(&fx().join("io.safetensors"))
        .expect("io fixture")
        .into_iter()
        .collect()
}

fn diffusers_vae() -> WanVae {
    WanVae::load(&fx().join("diffusers"), Device::Cpu, Kind::Float).expect("diffusers folder")
}

fn tiny_cfg() -> VaeConfig {
    VaeConfig::from_diffusers_json(&fx().join("diffusers/config.json")).expect("config")
}

/// The fixture's weights under Wan's original names (the table in wan_names.json comes from
/// the fixture script and is checked there against diffusers' own converter).
fn wan_named_tensors() -> Vec<(String, Tensor)> {
    let text = std::fs::read_to_string(fx().join("wan_names.json")).expect("wan_names.json");
    let table: HashMap<String, String> = serde_json::from_str(&text).expect("json");
    load_named_tensors(&fx().join("diffusers/diffusion_pytorch_model.safetensors"))
        .expect("diffusers weights")
        .into_iter()
        .map(|(n, t)| (table[&n].clone(), t))
        .collect()
}

/// Writes `wan_named_tensors()` to `dir/name` (a Wan-format `.safetensors` file).
fn write_wan_file(dir: &Path, name: &str) -> PathBuf {
    let f = dir.join(name);
    Tensor::write_safetensors(&wan_named_tensors(), &f).unwrap();
    f
}

fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    let d = (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .norm()
        .double_value(&[]);
    d / b.to_kind(Kind::Double).norm().double_value(&[])
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

fn perturb(vae: &WanVae, name: &str, by: f64) {
    let mut v = vae.vs.variables()[name].shallow_clone();
    tch::no_grad(|| {
        let _ = v.g_add_scalar_(by);
    });
}

#[test]
fn config_reads_diffusers_json_and_wan21_defaults() {
    let c = tiny_cfg();
    assert_eq!(
        (c.base_dim, c.z_dim, c.num_res_blocks),
        (4, 16, 2),
        "fixture config"
    );
    assert_eq!(c.dim_mult, vec![1, 2, 4, 4]);
    assert_eq!(c.temperal_downsample, vec![false, true, true]);
    let w = VaeConfig::wan21();
    assert_eq!((w.base_dim, w.time_stride(), w.space_stride()), (96, 4, 8));
    // The diffusers config carries the same 16 latent statistics as Wan's wrapper.
    assert_eq!(c.latents_mean, w.latents_mean);
    assert_eq!(c.latents_std, w.latents_std);
    // Wan2.1's full VAE: the well-known ~127 M parameters (Wan2.1_VAE.pth is 508 MB in f32).
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let _net = stillflow::models::vae::build_net(&vs.root(), &w).unwrap();
    let n: i64 = vs.variables().values().map(|t| t.numel() as i64).sum();
    assert!((126_000_000..128_000_000).contains(&n), "{n} parameters");
}

#[test]
fn encode_matches_diffusers() {
    let io = io();
    let vae = diffusers_vae();
    let z = vae.encode(&io["video"]).unwrap();
    assert_eq!(z.size(), vec![1, 16, 3, 2, 3]);
    let err = rel_err(&z, &io["latents"]);
    eprintln!("encode parity: rel err {err:.3e}");
    assert!(err <= 1e-4, "encode relative error {err}");
    // The test can fail: a small change in a deep encoder weight moves the latents.
    perturb(&vae, "encoder.downsamples.8.time_conv.bias", 0.05);
    let z2 = vae.encode(&io["video"]).unwrap();
    assert!(rel_err(&z2, &io["latents"]) > 1e-3);
}

#[test]
fn decode_matches_diffusers() {
    let io = io();
    let vae = diffusers_vae();
    let x = vae.decode(&io["z"]).unwrap();
    assert_eq!(x.size(), vec![2, 3, 13, 16, 24]);
    assert_eq!(x.kind(), Kind::Float);
    let err = rel_err(&x, &io["decoded"]);
    eprintln!(
        "decode parity: rel err {err:.3e}, max abs {:.3e}",
        max_abs(&x, &io["decoded"])
    );
    assert!(err <= 1e-4, "decode relative error {err}");
    assert!(x.abs().max().double_value(&[]) <= 1.0);
    perturb(&vae, "decoder.upsamples.3.time_conv.bias", 0.05);
    let x2 = vae.decode(&io["z"]).unwrap();
    assert!(rel_err(&x2, &io["decoded"]) > 1e-3);
}

#[test]
fn wan_named_file_loads_the_same_weights() {
    let io = io();
    let d = diffusers_vae();
    let dir = tempfile::tempdir().unwrap();
    let w = WanVae::load_wan_safetensors(
        &write_wan_file(dir.path(), "wan_tiny.safetensors"),
        tiny_cfg(),
        Device::Cpu,
        Kind::Float,
    )
    .unwrap();
    let dv = d.vs.variables();
    let wv = w.vs.variables();
    assert_eq!(dv.len(), wv.len());
    for (n, t) in &wv {
        assert!(t.equal(&dv[n]), "{n} differs between the two formats");
    }
    let x = w.decode(&io["z"]).unwrap();
    assert!(rel_err(&x, &io["decoded"]) <= 1e-4);
    // The name table agrees with the diffusers file exactly (no extra, no missing names).
    let file: std::collections::BTreeSet<String> =
        load_named_tensors(&fx().join("diffusers/diffusion_pytorch_model.safetensors"))
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
    let mapped: std::collections::BTreeSet<String> = wv
        .keys()
        .map(|n| names::wan_to_diffusers(n, 2).unwrap())
        .collect();
    assert_eq!(file, mapped);
}

/// Frames from pushing `z` in chunks of `sizes` latent frames.
fn decode_in_chunks(vae: &WanVae, z: &Tensor, sizes: &[i64]) -> Tensor {
    let mut s = vae.decoder_stream();
    let mut outs = Vec::new();
    let mut start = 0;
    for &k in sizes {
        let before = s.video_frames();
        let y = s.push(&z.narrow(2, start, k)).unwrap();
        let expect = if start == 0 { 1 + 4 * (k - 1) } else { 4 * k };
        assert_eq!(y.size()[2], expect, "frames from a push of {k} at {start}");
        assert_eq!(s.video_frames() - before, expect);
        outs.push(y);
        start += k;
    }
    assert_eq!(start, z.size()[2]);
    Tensor::cat(&outs, 2)
}

#[test]
fn chunked_decode_equals_whole_decode() {
    let vae = diffusers_vae();
    let key = stillflow::rng::RngKey::new(
        7,
        0,
        stillflow::rng::Lane::Other,
        stillflow::rng::Purpose::Test,
    );
    let z = stillflow::rng::randn(&key, &[1, 16, 5, 2, 3], Kind::Float, Device::Cpu);
    let whole = vae.decode(&z).unwrap();
    assert_eq!(whole.size(), vec![1, 3, 17, 16, 24]);
    for sizes in [&[1, 2, 1, 1][..], &[1, 1, 1, 1, 1], &[2, 3], &[5]] {
        let chunked = decode_in_chunks(&vae, &z, sizes);
        let e = max_abs(&chunked, &whole);
        eprintln!("chunks {sizes:?}: max abs diff {e:.3e}");
        assert!(e <= 1e-5, "chunks {sizes:?}: max abs diff {e}");
    }
    // The cache does not grow with the number of frames pushed: from the third latent frame on
    // every causal conv holds its full CACHE_T frames.
    let mut s = vae.decoder_stream();
    let _ = s.push(&z.narrow(2, 0, 3)).unwrap();
    let after3 = s.cache_bytes();
    let _ = s.push(&z.narrow(2, 3, 2)).unwrap();
    assert_eq!(s.cache_bytes(), after3);
    assert!(after3 > 0);
    // A later frame depends on earlier ones through the cache (it is not a per-frame decode).
    let alone = vae.decode(&z.narrow(2, 4, 1)).unwrap();
    assert!(max_abs(&alone, &whole.narrow(2, 16, 1)) > 1e-3);
}

#[test]
fn bf16_runs_close_to_f32() {
    let io = io();
    let f = diffusers_vae();
    let b = WanVae::load(&fx().join("diffusers"), Device::Cpu, Kind::BFloat16).unwrap();
    assert_eq!(b.kind(), Kind::BFloat16);
    let xb = b.decode(&io["z"]).unwrap();
    let xf = f.decode(&io["z"]).unwrap();
    let e = rel_err(&xb, &xf);
    eprintln!("bf16 vs f32 decode: rel err {e:.3e}");
    assert!(e < 0.1, "bf16 decode rel err {e}");
    let zb = b.encode(&io["video"]).unwrap();
    assert_eq!(zb.kind(), Kind::Float);
    assert!(rel_err(&zb, &io["latents"]) < 0.1);
}

fn err_text(r: anyhow::Result<WanVae>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

#[test]
fn load_finds_a_diffusers_root() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fx().join("diffusers"), &dir.path().join("vae"));
    let vae = WanVae::load(dir.path(), Device::Cpu, Kind::Float).unwrap();
    assert_eq!(vae.cfg, tiny_cfg());
}

#[test]
fn clear_load_errors() {
    let dir = tempfile::tempdir().unwrap();
    // Missing path.
    let missing = dir.path().join("nope");
    let e = err_text(WanVae::load(&missing, Device::Cpu, Kind::Float));
    assert!(e.contains("nope") && e.contains("do not exist"), "{e}");
    // A Wan release folder with only the .pth.
    let rel = dir.path().join("Wan2.1-T2V-1.3B");
    std::fs::create_dir_all(&rel).unwrap();
    std::fs::write(rel.join("Wan2.1_VAE.pth"), b"not really").unwrap();
    let e = err_text(WanVae::load(&rel, Device::Cpu, Kind::Float));
    assert!(
        e.contains("Wan2.1_VAE.pth") && e.contains("scripts/import_wan.py"),
        "{e}"
    );
    let e = err_text(WanVae::load(
        &rel.join("Wan2.1_VAE.pth"),
        Device::Cpu,
        Kind::Float,
    ));
    assert!(e.contains("scripts/import_wan.py"), "{e}");
    // An empty folder says what it looked for.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = err_text(WanVae::load(&empty, Device::Cpu, Kind::Float));
    assert!(
        e.contains("Wan2.1_VAE.safetensors") && e.contains("config.json"),
        "{e}"
    );
    // A diffusers folder whose config does not fit its weights: mis-shaped keys, both names.
    let bad = dir.path().join("bad_vae");
    copy_dir(&fx().join("diffusers"), &bad);
    let cfg = std::fs::read_to_string(bad.join("config.json")).unwrap();
    std::fs::write(
        bad.join("config.json"),
        cfg.replace("\"base_dim\": 4", "\"base_dim\": 8"),
    )
    .unwrap();
    let e = err_text(WanVae::load(&bad, Device::Cpu, Kind::Float));
    assert!(
        e.contains("diffusion_pytorch_model.safetensors") && e.contains("mis-shaped"),
        "{e}"
    );
    assert!(
        e.contains("mis-shaped: decoder.head.2.weight: expected [3, 8, 3, 3, 3], found [3, 4, 3, 3, 3] (diffusers: decoder.conv_out.weight)"),
        "{e}"
    );
    // A Wan file of another width loads with that width (read off encoder.conv1), the rest
    // of Wan2.1's layout checked by name and shape.
    let v = WanVae::load(
        &write_wan_file(dir.path(), "wan_tiny.safetensors"),
        Device::Cpu,
        Kind::Float,
    )
    .unwrap();
    assert_eq!(v.cfg.base_dim, tiny_cfg().base_dim);
    // Read as Wan2.1's full width, every key is mis-shaped and the file is named.
    let e = err_text(WanVae::load_wan_safetensors(
        &write_wan_file(dir.path(), "wan_tiny2.safetensors"),
        VaeConfig::wan21(),
        Device::Cpu,
        Kind::Float,
    ));
    assert!(
        e.contains("wan_tiny2.safetensors") && e.contains("mis-shaped: encoder.conv1.weight"),
        "{e}"
    );
    // A Wan file with one key missing and one extra.
    let mut t = wan_named_tensors();
    t.retain(|(n, _)| n != "decoder.middle.1.proj.bias");
    t.push((
        "decoder.extra".into(),
        Tensor::zeros([1], (Kind::Float, Device::Cpu)),
    ));
    let f = dir.path().join("Wan2.1_VAE.safetensors");
    Tensor::write_safetensors(&t, &f).unwrap();
    let e = err_text(WanVae::load_wan_safetensors(
        &f,
        tiny_cfg(),
        Device::Cpu,
        Kind::Float,
    ));
    assert!(
        e.contains("missing: decoder.middle.1.proj.bias")
            && e.contains("unexpected: decoder.extra"),
        "{e}"
    );
    // A Wan release folder is found by its converted file (width read off the file, the rest
    // checked by name): the same missing and unexpected keys, naming the file.
    let e = err_text(WanVae::load(dir.path(), Device::Cpu, Kind::Float));
    assert!(
        e.contains("Wan2.1_VAE.safetensors")
            && e.contains("missing: decoder.middle.1.proj.bias")
            && e.contains("unexpected: decoder.extra"),
        "{e}"
    );
    // Unsupported diffusers variants are refused by name.
    std::fs::write(
        bad.join("config.json"),
        cfg.replace("\"is_residual\": false", "\"is_residual\": true"),
    )
    .unwrap();
    let e = err_text(WanVae::load(&bad, Device::Cpu, Kind::Float));
    assert!(
        e.contains("is_residual") && e.contains("config.json"),
        "{e}"
    );
}

#[test]
fn bad_inputs_are_errors() {
    let vae = WanVae::random(tiny_cfg(), Device::Cpu, Kind::Float, 1).unwrap();
    let v = Tensor::zeros([1, 3, 6, 16, 16], (Kind::Float, Device::Cpu));
    let e = vae.encode(&v).unwrap_err().to_string();
    assert!(e.contains("T = 1 + 4"), "{e}");
    let v = Tensor::zeros([1, 3, 5, 12, 16], (Kind::Float, Device::Cpu));
    assert!(vae.encode(&v).is_err());
    let z = Tensor::zeros([1, 8, 2, 2, 2], (Kind::Float, Device::Cpu));
    assert!(vae.decode(&z).is_err());
    let mut s = vae.decoder_stream();
    let _ = s
        .push(&Tensor::zeros([1, 16, 1, 2, 2], (Kind::Float, Device::Cpu)))
        .unwrap();
    let e = s
        .push(&Tensor::zeros([1, 16, 1, 2, 3], (Kind::Float, Device::Cpu)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("stream started"), "{e}");
    // Encode then decode keeps the shapes of Wan's 4×8×8 compression.
    let v = Tensor::zeros([2, 3, 5, 16, 8], (Kind::Float, Device::Cpu));
    let z = vae.encode(&v).unwrap();
    assert_eq!(z.size(), vec![2, 16, 2, 2, 1]);
    assert_eq!(vae.decode(&z).unwrap().size(), vec![2, 3, 5, 16, 8]);
}
