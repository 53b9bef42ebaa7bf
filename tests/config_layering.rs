//! Layered config (DESIGN §5): built-in defaults < `--config` files (in order) < `STILLFLOW__*`
//! environment < `--set`. Unknown keys, wrong types and bad YAML are errors naming the key and the
//! layer (Self-Forcing yamls: tests/config_self_forcing.rs).
//! The environment is always passed through `LoadOptions.env`; the process env is never touched.

use stillflow::config::{
    env_layers, load, load_layers, set_layer, ConfigError, Layer, LoadOptions, Loaded, RunConfig,
};

fn fixture(name: &str) -> String {
    format!(
        "{}/tests/fixtures/configs/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn layer(name: &str, yaml: &str) -> Layer {
    Layer {
        name: name.into(),
        yaml: yaml.into(),
    }
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn opts(configs: &[&str], env_pairs: &[(&str, &str)], sets: &[&str]) -> LoadOptions {
    LoadOptions {
        configs: configs.iter().map(|s| s.to_string()).collect(),
        sets: sets.iter().map(|s| s.to_string()).collect(),
        env: env(env_pairs),
        default_when_empty: false,
    }
}

fn load_sets(sets: &[&str]) -> Result<Loaded, ConfigError> {
    load(&opts(&[], &[], sets))
}

fn err_of(r: Result<Loaded, ConfigError>) -> ConfigError {
    match r {
        Ok(l) => panic!("expected an error, got a config loaded from {:?}", l.layers),
        Err(e) => e,
    }
}

// ---- precedence -----------------------------------------------------------------------------

#[test]
fn precedence_defaults_files_env_set() {
    let (a, b) = (fixture("layer_a.yaml"), fixture("layer_b.yaml"));
    let env_pairs = [
        ("STILLFLOW__SEED", "33"),
        ("STILLFLOW__TOY__MODE_STD", "0.5"),
        // Not ours: no double underscore after the prefix, or another prefix.
        ("STILLFLOW_LR", "9.0"),
        ("PATH", "/usr/bin"),
    ];
    let got = load(&opts(&[&a, &b], &env_pairs, &["seed=44"])).unwrap();
    let c = &got.config;
    let d = RunConfig::default();
    assert_eq!(c.weight_decay, d.weight_decay, "default survives");
    assert_eq!(c.weight_decay, 0.01);
    assert_eq!(c.beta2, 0.9, "only layer_a sets beta2");
    assert_eq!(c.lr, 2.0e-3, "layer_b (later file) wins over layer_a");
    assert_eq!(
        c.toy.num_modes, 3,
        "nested maps merge: layer_a's toy.num_modes kept"
    );
    assert_eq!(c.toy.num_classes, 6, "layer_b's toy.num_classes");
    assert_eq!(c.toy.mode_std, 0.5, "environment wins over files");
    assert_eq!(c.toy.seed, d.toy.seed);
    assert_eq!(c.seed, 44, "--set wins over the environment");
    assert_eq!(
        got.layers,
        vec![
            a.clone(),
            b.clone(),
            "environment variable STILLFLOW__SEED".to_string(),
            "environment variable STILLFLOW__TOY__MODE_STD".to_string(),
            "--set seed=44".to_string(),
        ]
    );

    // Without --set the environment decides; without the environment the last file decides.
    let got = load(&opts(&[&a, &b], &env_pairs, &[])).unwrap();
    assert_eq!(got.config.seed, 33);
    let got = load(&opts(&[&a, &b], &[], &[])).unwrap();
    assert_eq!(got.config.seed, 22);
    assert_eq!(got.config.toy.mode_std, 0.25);
    // Files in the other order: layer_a wins.
    let got = load(&opts(&[&b, &a], &[], &[])).unwrap();
    assert_eq!((got.config.seed, got.config.lr), (11, 1.0e-3));
    assert_eq!(got.config.toy.num_classes, 6);
}

#[test]
fn later_set_wins_over_earlier_set() {
    let got = load_sets(&["lr=1e-3", "lr=5e-5"]).unwrap();
    assert_eq!(got.config.lr, 5e-5);
}

#[test]
fn nothing_given_is_the_builtin_defaults() {
    let got = load(&LoadOptions::default()).unwrap();
    assert_eq!(got.config, RunConfig::default());
    assert!(got.layers.is_empty() && got.ignored.is_empty());
    // default_when_empty picks the embedded toy_dmd.
    let got = load(&LoadOptions {
        default_when_empty: true,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(got.layers, vec!["embedded config `toy_dmd`".to_string()]);
    assert_eq!(got.config.real_name, "gmm");
}

// ---- --set value types ----------------------------------------------------------------------

#[test]
fn set_parses_yaml_types() {
    let got = load_sets(&[
        "lr=3e-4",
        "lr_critic = 2.5e-06",
        "denoising_step_list=[1000, 750]",
        "warp_denoising_step=true",
        "toy.num_modes=12",
        "real_name=Wan2.1-T2V-1.3B",
        "negative_prompt=blurry, static",
        "generator_ckpt=checkpoints/ode_init.pt",
        "real_guidance_scale=4",
        "model_kwargs.timestep_shift=3.0",
    ])
    .unwrap();
    let c = got.config;
    assert_eq!(c.lr, 3e-4, "exact f64 of 3e-4");
    assert_eq!(c.lr.to_bits(), 3e-4_f64.to_bits());
    assert_eq!(c.lr_critic, 2.5e-6);
    assert_eq!(c.denoising_step_list, vec![1000.0, 750.0]);
    assert!(c.warp_denoising_step);
    assert_eq!(c.toy.num_modes, 12);
    assert_eq!(c.toy.num_classes, RunConfig::default().toy.num_classes);
    assert_eq!(c.real_name, "Wan2.1-T2V-1.3B");
    assert_eq!(c.negative_prompt, "blurry, static");
    assert_eq!(c.generator_ckpt.as_deref(), Some("checkpoints/ode_init.pt"));
    assert_eq!(c.real_guidance_scale, Some(4.0));
    assert_eq!(c.model_kwargs.timestep_shift, 3.0);
}

#[test]
fn set_quoted_string_and_empty_value() {
    let got = load_sets(&["real_name='a b: c'", "generator_ckpt="]).unwrap();
    assert_eq!(got.config.real_name, "a b: c");
    assert_eq!(got.config.generator_ckpt, None, "an empty value is null");
}

#[test]
fn set_layer_yaml_and_name() {
    let l = set_layer("toy.num_modes=12").unwrap();
    assert_eq!(l.name, "--set toy.num_modes=12");
    assert_eq!(l.yaml, "toy:\n  num_modes: 12\n");
}

#[test]
fn set_without_equals_or_with_bad_key_is_badset() {
    for (expr, why) in [
        ("lr", "no `=`"),
        ("=3", "bad key ``"),
        ("a..b=1", "bad key `a..b`"),
        ("toy.=1", "bad key `toy.`"),
        ("l r=1", "bad key `l r`"),
        ("lr=1\n2", "value spans lines"),
    ] {
        match set_layer(expr) {
            Err(ConfigError::BadSet { expr: e, why: w }) => {
                assert_eq!(e, expr);
                assert_eq!(w, why, "{expr:?}");
            }
            other => panic!("{expr:?}: expected BadSet, got {other:?}"),
        }
        let msg = err_of(load_sets(&[expr])).to_string();
        assert!(msg.starts_with("bad --set `"), "{msg}");
        assert!(
            msg.contains(expr) && msg.contains("expected KEY=VALUE"),
            "{msg}"
        );
    }
}

// ---- unknown keys ---------------------------------------------------------------------------

#[test]
fn unknown_key_names_key_file_and_hint() {
    let f = fixture("unknown_key.yaml");
    let e = err_of(load(&opts(&[&f], &[], &[])));
    match &e {
        ConfigError::UnknownKey {
            source_name,
            key,
            hint,
        } => {
            assert_eq!(source_name, &f);
            assert_eq!(key, "lr_critc");
            assert_eq!(hint, " (did you mean `lr_critic`?)");
        }
        other => panic!("expected UnknownKey, got {other:?}"),
    }
    assert_eq!(
        e.to_string(),
        format!("{f}: unknown key `lr_critc` (did you mean `lr_critic`?)")
    );
}

#[test]
fn unknown_nested_key() {
    let f = fixture("unknown_nested_key.yaml");
    let e = err_of(load(&opts(&[&f], &[], &[])));
    assert!(
        matches!(&e, ConfigError::UnknownKey { source_name, key, .. } if source_name == &f && key == "toy.foo"),
        "{e:?}"
    );
    assert!(e.to_string().contains("unknown key `toy.foo`"), "{e}");
    // A near miss inside a nested map gets a nested hint.
    let e = err_of(load_sets(&["toy.num_mode=3"]));
    assert_eq!(
        e.to_string(),
        "--set toy.num_mode=3: unknown key `toy.num_mode` (did you mean `toy.num_modes`?)"
    );
    let e = err_of(load_sets(&["model_kwargs.shift=3"]));
    assert!(e.to_string().contains("`model_kwargs.shift`"), "{e}");
}

#[test]
fn unknown_key_far_from_everything_gets_no_hint() {
    let e = err_of(load(&opts(&[], &[], &["zzzzzzzzzzzz=1"])));
    assert_eq!(
        e.to_string(),
        "--set zzzzzzzzzzzz=1: unknown key `zzzzzzzzzzzz`"
    );
}

#[test]
fn unknown_key_in_a_later_file_names_that_file() {
    let (a, u) = (fixture("layer_a.yaml"), fixture("unknown_key.yaml"));
    let e = err_of(load(&opts(&[&a, &u], &[], &[])));
    assert!(e.to_string().starts_with(&format!("{u}: ")), "{e}");
}

// ---- wrong types, bad YAML --------------------------------------------------------------------

#[test]
fn wrong_type_names_key_and_layer() {
    let f = fixture("bad_type.yaml");
    let e = err_of(load(&opts(&[&f], &[], &[])));
    match &e {
        ConfigError::BadValue {
            source_name,
            key,
            err,
        } => {
            assert_eq!(source_name, &f);
            assert_eq!(key, "lr");
            assert!(err.contains("abc"), "{err}");
        }
        other => panic!("expected BadValue, got {other:?}"),
    }
    // The layer is checked on its own: a later correct --set does not hide the bad file.
    let e = err_of(load(&opts(&[&f], &[], &["lr=1e-3"])));
    assert!(e.to_string().starts_with(&format!("{f}: key `lr`")), "{e}");
    // Through --set, the --set expression is the layer.
    let e = err_of(load_sets(&["lr=abc"]));
    assert!(e.to_string().starts_with("--set lr=abc: key `lr`: "), "{e}");
}

#[test]
fn wrong_type_in_nested_and_list_keys() {
    let e = err_of(load_layers(&[layer("n.yaml", "toy:\n  num_modes: many\n")]));
    assert!(
        e.to_string().starts_with("n.yaml: key `toy.num_modes`"),
        "{e}"
    );
    let e = err_of(load_layers(&[layer(
        "l.yaml",
        "denoising_step_list: [1000, x]\n",
    )]));
    assert!(
        e.to_string()
            .starts_with("l.yaml: key `denoising_step_list"),
        "{e}"
    );
    let e = err_of(load_layers(&[layer(
        "b.yaml",
        "warp_denoising_step: \"true\"\n",
    )]));
    assert!(
        e.to_string()
            .starts_with("b.yaml: key `warp_denoising_step`"),
        "{e}"
    );
    let e = err_of(load_layers(&[layer("m.yaml", "toy: 3\n")]));
    assert!(e.to_string().starts_with("m.yaml: key `toy`"), "{e}");
}

#[test]
fn bad_yaml_names_file_and_line() {
    let f = fixture("bad_yaml.yaml");
    let e = err_of(load(&opts(&[&f], &[], &[])));
    assert!(
        matches!(&e, ConfigError::Yaml { source_name, .. } if source_name == &f),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(msg.starts_with(&format!("{f}: invalid YAML: ")), "{msg}");
    assert!(msg.contains("line 3"), "the offending line is 3: {msg}");
}

#[test]
fn duplicate_key_and_top_level_list_are_errors() {
    let e = err_of(load_layers(&[layer("d.yaml", "lr: 1\nlr: 2\n")]));
    assert!(
        e.to_string().starts_with("d.yaml: invalid YAML") && e.to_string().contains("line 2"),
        "{e}"
    );
    let e = err_of(load_layers(&[layer("t.yaml", "- 1\n- 2\n")]));
    assert!(e.to_string().starts_with("t.yaml: "), "{e}");
}

#[test]
fn empty_and_comment_only_files_are_no_ops() {
    let got = load_layers(&[layer("e.yaml", ""), layer("c.yaml", "# nothing here\n")]).unwrap();
    assert_eq!(got.config, RunConfig::default());
}

#[test]
fn missing_file_and_unknown_embedded_name() {
    let e = err_of(load(&opts(&["/nonexistent/dir/cfg.yaml"], &[], &[])));
    assert!(
        matches!(&e, ConfigError::Read { source_name, .. } if source_name == "/nonexistent/dir/cfg.yaml"),
        "{e:?}"
    );
    let e = err_of(load(&opts(&["toy_dmdd"], &[], &[])));
    let msg = e.to_string();
    assert!(msg.starts_with("toy_dmdd: cannot read"), "{msg}");
    assert!(
        msg.contains("toy_dmd, toy_sid, self_forcing_dmd, self_forcing_sid"),
        "{msg}"
    );
}

// ---- semantic validation --------------------------------------------------------------------

fn bad_key_of(sets: &[&str]) -> String {
    match err_of(load_sets(sets)) {
        ConfigError::BadValue { key, .. } => key,
        other => panic!("{sets:?}: expected BadValue, got {other:?}"),
    }
}

#[test]
fn semantic_errors_name_the_key() {
    assert_eq!(bad_key_of(&["distribution_loss=gan"]), "distribution_loss");
    let msg = err_of(load_sets(&["distribution_loss=gan"])).to_string();
    assert!(msg.contains("`gan`") && msg.contains("dmd or sid"), "{msg}");
    assert_eq!(bad_key_of(&["lr=-1e-4"]), "lr");
    assert_eq!(
        bad_key_of(&["image_or_video_shape=[1, 21, 16]"]),
        "image_or_video_shape"
    );
    assert_eq!(
        bad_key_of(&["image_or_video_shape=[1, 21, 16, 0, 104]"]),
        "image_or_video_shape"
    );
    assert_eq!(
        bad_key_of(&["denoising_loss_type=eps"]),
        "denoising_loss_type"
    );
    assert_eq!(
        bad_key_of(&["denoising_step_list=[]"]),
        "denoising_step_list"
    );
    assert_eq!(
        bad_key_of(&["denoising_step_list=[1001]"]),
        "denoising_step_list"
    );
    assert_eq!(
        bad_key_of(&["num_frame_per_block=0"]),
        "num_frame_per_block"
    );
    assert_eq!(
        bad_key_of(&["dfake_gen_update_ratio=0"]),
        "dfake_gen_update_ratio"
    );
    assert_eq!(bad_key_of(&["ema_weight=1.5"]), "ema_weight");
    assert_eq!(bad_key_of(&["schedule=parallel"]), "schedule");
    assert_eq!(bad_key_of(&["batch_size=0"]), "batch_size");
}

#[test]
fn semantic_errors_name_the_exact_key_not_its_sibling() {
    // Regression: a negative lr_critic was reported as `lr`, a bad score_timestep_shift as
    // `timestep_shift`.
    assert_eq!(bad_key_of(&["lr_critic=-1e-6"]), "lr_critic");
    assert_eq!(bad_key_of(&["timestep_shift=0"]), "timestep_shift");
    assert_eq!(
        bad_key_of(&["score_timestep_shift=-8"]),
        "score_timestep_shift"
    );
}

// ---- environment ------------------------------------------------------------------------------

#[test]
fn env_double_underscore_nests() {
    let layers = env_layers(&env(&[
        ("STILLFLOW__TOY__NUM_MODES", "5"),
        ("STILLFLOW__LR_CRITIC", "1e-5"),
        ("OTHER__LR", "1"),
    ]))
    .unwrap();
    let names: Vec<&str> = layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "environment variable STILLFLOW__LR_CRITIC",
            "environment variable STILLFLOW__TOY__NUM_MODES",
        ]
    );
    assert_eq!(layers[1].yaml, "toy:\n  num_modes: 5\n");

    let got = load(&opts(
        &[],
        &[
            ("STILLFLOW__TOY__NUM_MODES", "5"),
            ("STILLFLOW__LR_CRITIC", "1e-5"),
            ("STILLFLOW__MODEL_KWARGS__TIMESTEP_SHIFT", "3.0"),
            ("STILLFLOW__DENOISING_STEP_LIST", "[1000, 500]"),
        ],
        &[],
    ))
    .unwrap();
    let c = got.config;
    assert_eq!(c.toy.num_modes, 5);
    assert_eq!(c.lr_critic, 1e-5);
    assert_eq!(c.model_kwargs.timestep_shift, 3.0);
    assert_eq!(c.denoising_step_list, vec![1000.0, 500.0]);
}

#[test]
fn env_errors_name_the_variable() {
    let e = err_of(load(&opts(&[], &[("STILLFLOW__TOY__NUM_MODEZ", "5")], &[])));
    assert_eq!(
        e.to_string(),
        "environment variable STILLFLOW__TOY__NUM_MODEZ: unknown key `toy.num_modez` (did you mean `toy.num_modes`?)"
    );
    let e = err_of(load(&opts(&[], &[("STILLFLOW__LR", "fast")], &[])));
    assert!(
        e.to_string()
            .starts_with("environment variable STILLFLOW__LR: key `lr`"),
        "{e}"
    );
    let e = err_of(load(&opts(&[], &[("STILLFLOW__", "1")], &[])));
    assert!(e.to_string().contains("STILLFLOW__"), "{e}");
    let e = err_of(load(&opts(&[], &[("STILLFLOW__TOY____X", "1")], &[])));
    assert!(e.to_string().contains("STILLFLOW__TOY____X"), "{e}");
}

#[test]
fn short_unknown_keys_get_no_far_fetched_hint() {
    // Regression: `a: 1` was answered with "did you mean `lr`?" (edit distance 2 <= 3).
    let e = err_of(load_layers(&[layer("s.yaml", "a: 1\n")]));
    assert_eq!(e.to_string(), "s.yaml: unknown key `a`");
    let e = err_of(load_sets(&["ab=1"]));
    assert_eq!(e.to_string(), "--set ab=1: unknown key `ab`");
    // Real typos of short keys still get one.
    let e = err_of(load_sets(&["lrr=1"]));
    assert_eq!(
        e.to_string(),
        "--set lrr=1: unknown key `lrr` (did you mean `lr`?)"
    );
    let e = err_of(load_sets(&["sed=1"]));
    assert_eq!(
        e.to_string(),
        "--set sed=1: unknown key `sed` (did you mean `seed`?)"
    );
}

/// `ema_device` takes "" (with the weights) or cpu; anything else names the key.
#[test]
fn ema_device_is_validated() {
    assert_eq!(
        load_sets(&["ema_device=cpu"])
            .expect("cpu")
            .config
            .ema_device,
        "cpu"
    );
    assert_eq!(load_sets(&[]).expect("default").config.ema_device, "");
    let e = err_of(load_sets(&["ema_device=gpu"])).to_string();
    assert!(
        e.contains("ema_device") && e.contains("gpu") && e.contains("cpu"),
        "{e}"
    );
}

#[test]
fn checkpoint_keep_attention_takes_roles() {
    let load = |v: &str| {
        stillflow::config::load(&stillflow::config::LoadOptions {
            configs: vec!["toy_dmd".into()],
            sets: vec![format!("checkpoint_keep_attention={v}")],
            env: vec![],
            default_when_empty: false,
        })
    };
    let roles = |v: &str| {
        let c = load(v).unwrap_or_else(|e| panic!("{v}: {e}")).config;
        ["generator", "fake", "critic", "real", "teacher"]
            .iter()
            .map(|r| c.keeps_attention(r))
            .collect::<Vec<_>>()
    };
    assert_eq!(roles("all"), [true; 5]);
    assert_eq!(roles("true"), [true; 5]);
    assert_eq!(roles("none"), [false; 5]);
    assert_eq!(roles("false"), [false; 5]);
    assert_eq!(roles("fake"), [false, true, true, false, false]);
    assert_eq!(roles("generator, critic"), [true, true, true, false, false]);
    let Err(e) = load("fake,gen") else {
        panic!("bad role accepted")
    };
    let e = format!("{e:#}");
    assert!(
        e.contains("checkpoint_keep_attention") && e.contains("gen"),
        "{e}"
    );
    let default = stillflow::config::RunConfig::default();
    assert!(default.keeps_attention("fake") && !default.keeps_attention("generator"));
}
