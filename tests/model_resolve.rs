//! Model names → sources (`models::resolve`): toys by name, folders as written or under
//! `model_root`, random weights only by name (`random:`) or `allow_random_weights`, the
//! architecture of a preset when `generator_ckpt` supplies every weight, and one error that says
//! what to download otherwise. DiT shard selection in a release folder.

use stillflow::config::RunConfig;
use stillflow::models::resolve::{check_models, dit_shards, resolve, Source};

fn cfg() -> RunConfig {
    RunConfig {
        model_root: "/nonexistent-model-root".into(),
        ..RunConfig::default()
    }
}

#[test]
fn toys_and_random_presets_only_by_name() {
    let c = cfg();
    assert_eq!(
        resolve("GMM", "real_name", &c, false).unwrap(),
        Source::Toy("gmm".into())
    );
    assert_eq!(
        resolve("wan-tiny", "fake_name", &c, false).unwrap(),
        Source::Toy("wan-tiny".into())
    );
    match resolve("random:Wan2.1-T2V-14B", "real_name", &c, false).unwrap() {
        Source::Random { preset, cfg } => {
            assert_eq!(preset, "wan2.1-t2v-14b");
            assert_eq!(cfg.dim, 5120);
        }
        s => panic!("{s:?}"),
    }
    let e = resolve("random:wan3", "real_name", &c, false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unknown preset") && e.contains("real_name"),
        "{e}"
    );
    // A preset name without the prefix is an error with the download command and the spelling.
    let e = resolve("Wan2.1-T2V-1.3B", "fake_name", &c, false)
        .unwrap_err()
        .to_string();
    for want in [
        "fake_name",
        "huggingface-cli download Wan-AI/Wan2.1-T2V-1.3B",
        "/nonexistent-model-root/Wan2.1-T2V-1.3B",
        "random:wan2.1-t2v-1.3b",
        "allow_random_weights",
    ] {
        assert!(e.contains(want), "missing {want:?}: {e}");
    }
    // ... unless the config allows random weights, or a generator checkpoint supplies them all.
    let allow = RunConfig {
        allow_random_weights: true,
        ..cfg()
    };
    assert!(matches!(
        resolve("Wan2.1-T2V-1.3B", "fake_name", &allow, false).unwrap(),
        Source::Random { .. }
    ));
    assert!(matches!(
        resolve("wan2.1-t2v-1.3b", "generator_name", &c, true).unwrap(),
        Source::Architecture { .. }
    ));
    // Unknown names: no preset hint.
    let e = resolve("my-model", "real_name", &c, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("my-model") && !e.contains("random:"), "{e}");
}

#[test]
fn folders_as_written_or_under_model_root() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("wan_models");
    let m = root.join("Wan2.1-T2V-1.3B");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(m.join("config.json"), r#"{"dim": 32}"#).unwrap();
    let c = RunConfig {
        model_root: root.display().to_string(),
        ..RunConfig::default()
    };
    // The bare name finds <model_root>/<name>; the path as written too.
    for name in ["Wan2.1-T2V-1.3B".to_string(), m.display().to_string()] {
        match resolve(&name, "real_name", &c, false).unwrap() {
            Source::Folder(w) => {
                assert_eq!(w.dir, m);
                assert!(!w.diffusers);
            }
            s => panic!("{s:?}"),
        }
    }
    // A diffusers root: its transformer/ folder.
    let dr = d.path().join("diff");
    std::fs::create_dir_all(dr.join("transformer")).unwrap();
    std::fs::write(
        dr.join("transformer/config.json"),
        r#"{"_class_name": "WanTransformer3DModel"}"#,
    )
    .unwrap();
    match resolve(&dr.display().to_string(), "real_name", &c, false).unwrap() {
        Source::Folder(w) => assert!(w.diffusers && w.dir.ends_with("transformer")),
        s => panic!("{s:?}"),
    }
    // A folder without config.json is an error naming it.
    let empty = d.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = resolve(&empty.display().to_string(), "real_name", &c, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("config.json") && e.contains("empty"), "{e}");
}

#[test]
fn dit_shards_skip_the_text_encoder_and_vae() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    for f in [
        "models_t5_umt5-xxl-enc-bf16.safetensors",
        "Wan2.1_VAE.safetensors",
        "other.safetensors",
    ] {
        std::fs::write(p.join(f), b"x").unwrap();
    }
    // Without diffusion_pytorch_model*: every other safetensors (user shards).
    let s = dit_shards(p).unwrap();
    assert_eq!(s, vec![p.join("other.safetensors")]);
    // With them: those only.
    for f in [
        "diffusion_pytorch_model-00002-of-00002.safetensors",
        "diffusion_pytorch_model-00001-of-00002.safetensors",
    ] {
        std::fs::write(p.join(f), b"x").unwrap();
    }
    let s = dit_shards(p).unwrap();
    assert_eq!(
        s,
        vec![
            p.join("diffusion_pytorch_model-00001-of-00002.safetensors"),
            p.join("diffusion_pytorch_model-00002-of-00002.safetensors")
        ]
    );
    // .pth only: the conversion command.
    let q = tempfile::tempdir().unwrap();
    std::fs::write(q.path().join("diffusion_pytorch_model.pth"), b"x").unwrap();
    let e = dit_shards(q.path()).unwrap_err().to_string();
    assert!(e.contains("import_wan.py"), "{e}");
}

#[test]
fn check_models_lists_every_problem_once() {
    let c = RunConfig {
        generator_ckpt: Some("ckpts/ode_init.pt".into()),
        ..cfg()
    };
    let p = check_models(&c, &["generator", "fake", "real"]);
    assert_eq!(p.len(), 3, "{p:#?}"); // fake, real, and the .pt checkpoint (the generator is its architecture)
    assert!(p
        .iter()
        .any(|m| m.contains("real_name") && m.contains("Wan2.1-T2V-14B")));
    assert!(p.iter().any(|m| m.contains("fake_name")));
    assert!(p
        .iter()
        .any(|m| m.contains("generator_ckpt") && m.contains("import_self_forcing.py")));
    // Only the roles the pipeline uses are checked.
    assert_eq!(check_models(&cfg(), &["generator"]).len(), 1);
}
