//! Self-Forcing yamls (spec §6) load unchanged through the layered config: the reference's keys
//! take the reference's values, keys stillflow does not use are reported (key, layer), and the shipped
//! configs/self_forcing_{dmd,sid}.yaml differ exactly where the spec says.

use stillflow::config::{load, ConfigError, LoadOptions, Loaded, RunConfig, WAN_NEGATIVE_PROMPT};

fn fixture(name: &str) -> String {
    format!(
        "{}/tests/fixtures/configs/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn shipped(name: &str) -> String {
    format!("{}/configs/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn opts(configs: &[&str], sets: &[&str]) -> LoadOptions {
    LoadOptions {
        configs: configs.iter().map(|s| s.to_string()).collect(),
        sets: sets.iter().map(|s| s.to_string()).collect(),
        env: vec![],
        default_when_empty: false,
    }
}

fn load_sets(sets: &[&str]) -> Result<Loaded, ConfigError> {
    load(&opts(&[], sets))
}

/// The keys of self_forcing_dmd.yaml (spec §6) that stillflow does not use.
const SF_IGNORED: &[&str] = &[
    "fake_score_fsdp_wrap_strategy",
    "generator_fsdp_wrap_strategy",
    "load_raw_video",
    "real_score_fsdp_wrap_strategy",
    "sharding_strategy",
    "text_encoder_fsdp_wrap_strategy",
    "total_batch_size",
    "trainer",
    "wandb_entity",
    "wandb_host",
    "wandb_key",
    "wandb_project",
];

fn ignored_keys(got: &Loaded) -> Vec<String> {
    let mut k: Vec<String> = got.ignored.iter().map(|(k, _)| k.clone()).collect();
    k.sort();
    k
}

fn assert_reference_dmd_values(c: &RunConfig) {
    assert_eq!(c.distribution_loss, "dmd");
    assert_eq!(c.generator_ckpt.as_deref(), Some("checkpoints/ode_init.pt"));
    assert_eq!(c.real_name, "Wan2.1-T2V-14B");
    assert_eq!(c.fake_name, "Wan2.1-T2V-1.3B", "implicit getattr default");
    assert_eq!(c.denoising_step_list, vec![1000.0, 750.0, 500.0, 250.0]);
    assert!(c.warp_denoising_step && !c.ts_schedule);
    assert_eq!(c.num_train_timestep, 1000);
    assert_eq!((c.timestep_shift, c.guidance_scale), (5.0, 3.0));
    assert_eq!(c.denoising_loss_type, "flow");
    assert!(c.mixed_precision && c.gradient_checkpointing);
    assert_eq!(c.seed, 0);
    assert_eq!((c.lr, c.lr_critic), (2.0e-6, 4.0e-7));
    assert_eq!(
        (c.beta1, c.beta2, c.beta1_critic, c.beta2_critic),
        (0.0, 0.999, 0.0, 0.999)
    );
    assert_eq!(
        c.weight_decay, 0.01,
        "not set in the yaml: the default's 0.01"
    );
    assert_eq!(
        c.data_path.as_deref(),
        Some("prompts/vidprom_filtered_extended.txt")
    );
    assert_eq!(c.batch_size, 1);
    assert_eq!((c.ema_weight, c.ema_start_step), (0.99, 200));
    assert_eq!(c.log_iters, 50);
    assert_eq!(c.dfake_gen_update_ratio, 5);
    assert_eq!(c.image_or_video_shape, vec![1, 21, 16, 60, 104]);
    assert_eq!(c.num_frame_per_block, 3);
    assert_eq!(c.model_kwargs.timestep_shift, 5.0);
}

#[test]
fn self_forcing_reference_yaml_loads_and_reports_ignored_keys() {
    let f = fixture("self_forcing_dmd_reference.yaml");
    let got = load(&opts(&[&f], &[])).unwrap();
    assert_reference_dmd_values(&got.config);
    assert_eq!(
        got.config.negative_prompt,
        "a negative prompt, standing in for the Wan one"
    );
    assert_eq!(ignored_keys(&got), SF_IGNORED);
    assert!(
        got.ignored.iter().all(|(_, l)| l == &f),
        "{:?}",
        got.ignored
    );
}

#[test]
fn self_forcing_default_config_keys_load_under_a_method_yaml() {
    let (d, m) = (
        fixture("self_forcing_default.yaml"),
        fixture("self_forcing_dmd_reference.yaml"),
    );
    let got = load(&opts(&[&d, &m], &[])).unwrap();
    assert_reference_dmd_values(&got.config);
    assert_eq!(got.config.num_training_frames, 21);
    assert!(got.config.same_step_across_blocks && got.config.causal);
    let from_default: Vec<&String> = got
        .ignored
        .iter()
        .filter(|(_, l)| l == &d)
        .map(|(k, _)| k)
        .collect();
    assert_eq!(from_default.len(), 11, "{from_default:?}");
    // The default file alone: warp off.
    assert!(!load(&opts(&[&d], &[])).unwrap().config.warp_denoising_step);
}

#[test]
fn implicit_getattr_keys_are_accepted() {
    // Keys the reference reads with getattr defaults (spec §6): either known or ignored, never unknown.
    let got = load_sets(&[
        "real_guidance_scale=3.0",
        "fake_guidance_scale=0.0",
        "ts_schedule_max=false",
        "min_score_timestep=0",
        "max_grad_norm_generator=10.0",
        "max_grad_norm_critic=10.0",
        "fake_name=Wan2.1-T2V-1.3B",
        "text_encoder_cpu_offload=false",
        "backward_simulation=true",
        "local_attn_size=-1",
        "sink_size=0",
        "sid_alpha=1.0",
    ])
    .unwrap();
    assert_eq!(
        ignored_keys(&got),
        vec!["backward_simulation", "text_encoder_cpu_offload"]
    );
    assert_eq!(got.config.local_attn_size, -1);
}

#[test]
fn shipped_self_forcing_configs_load() {
    let dmd_path = shipped("self_forcing_dmd.yaml");
    let dmd = load(&opts(&[&dmd_path], &[])).unwrap();
    assert_reference_dmd_values(&dmd.config);
    assert_eq!(dmd.config.negative_prompt, WAN_NEGATIVE_PROMPT);
    assert_eq!(ignored_keys(&dmd), SF_IGNORED);

    let sid = load(&opts(&[&shipped("self_forcing_sid.yaml")], &[])).unwrap();
    let s = &sid.config;
    assert_eq!(s.distribution_loss, "sid");
    assert_eq!(s.lr_critic, 2.0e-6);
    assert_eq!(s.weight_decay, 0.0);
    assert_eq!(s.real_name, "Wan2.1-T2V-1.3B");
    assert_eq!(s.sid_alpha, 1.0);
    assert_eq!(ignored_keys(&sid), SF_IGNORED);
    // Everything else is the DMD file's.
    let mut patched = s.clone();
    patched.distribution_loss = "dmd".into();
    patched.lr_critic = dmd.config.lr_critic;
    patched.weight_decay = dmd.config.weight_decay;
    patched.real_name = dmd.config.real_name.clone();
    assert_eq!(patched, dmd.config);

    // The embedded copies are the same files.
    let emb = load(&opts(&["self_forcing_sid"], &[])).unwrap();
    assert_eq!(emb.config, sid.config);
    assert_eq!(
        emb.layers,
        vec!["embedded config `self_forcing_sid`".to_string()]
    );
}
