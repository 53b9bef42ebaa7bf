//! The `run-pipeline` binary on bad input (DESIGN §9, the bad-input standard): every bad input
//! exits non-zero, never panics, and names the file/key at fault. Good inputs around them exit 0.
//! Runs that would train use `--steps 2 --set progress=false --logdir <tempdir>` to stay fast.

use std::path::Path;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_run-pipeline");

fn fixture(name: &str) -> String {
    format!(
        "{}/tests/fixtures/configs/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn repo(path: &str) -> String {
    format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))
}

/// The command with the caller's `STILLFLOW__*` variables removed, so tests are hermetic.
fn cmd(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args).current_dir(env!("CARGO_MANIFEST_DIR"));
    for (k, _) in std::env::vars() {
        if k.starts_with("STILLFLOW__") {
            c.env_remove(k);
        }
    }
    c
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn finish(o: Output) -> Run {
    Run {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn run(args: &[&str]) -> Run {
    finish(cmd(args).output().expect("spawn run-pipeline"))
}

fn assert_no_panic(r: &Run, args: &[&str]) {
    assert!(
        !r.stderr.contains("panicked at") && !r.stderr.contains("RUST_BACKTRACE"),
        "{args:?} panicked:\n{}",
        r.stderr
    );
}

/// Runs `args`, expects a clean failure whose stderr contains every one of `needles`.
fn fails_naming(args: &[&str], needles: &[&str]) -> Run {
    let r = run(args);
    assert_no_panic(&r, args);
    assert!(
        r.code.is_some() && r.code != Some(0),
        "{args:?}: expected a non-zero exit, got {:?}\nstdout: {}\nstderr: {}",
        r.code,
        r.stdout,
        r.stderr
    );
    for n in needles {
        assert!(
            r.stderr.contains(n),
            "{args:?}: stderr lacks {n:?}:\n{}",
            r.stderr
        );
    }
    r
}

fn succeeds(args: &[&str]) -> Run {
    let r = run(args);
    assert_no_panic(&r, args);
    assert_eq!(r.code, Some(0), "{args:?} failed:\n{}", r.stderr);
    r
}

// ---- config inputs ----------------------------------------------------------------------------

#[test]
fn missing_config_file() {
    let r = fails_naming(
        &["--config", "/nonexistent/dir/cfg.yaml", "config"],
        &["/nonexistent/dir/cfg.yaml", "cannot read"],
    );
    assert!(r.stdout.is_empty(), "nothing on stdout: {}", r.stdout);
}

#[test]
fn unknown_embedded_config_name() {
    fails_naming(
        &["--config", "toy_dmdd", "config"],
        &[
            "toy_dmdd",
            "toy_dmd, toy_sid, self_forcing_dmd, self_forcing_sid",
        ],
    );
}

#[test]
fn unknown_key_in_config_file() {
    let f = fixture("unknown_key.yaml");
    fails_naming(
        &["--config", &f, "config"],
        &[&f, "unknown key `lr_critc`", "did you mean `lr_critic`?"],
    );
    let f = fixture("unknown_nested_key.yaml");
    fails_naming(&["--config", &f, "config"], &[&f, "`toy.foo`"]);
}

#[test]
fn bad_yaml_in_config_file() {
    let f = fixture("bad_yaml.yaml");
    fails_naming(&["--config", &f, "config"], &[&f, "invalid YAML", "line 3"]);
}

#[test]
fn wrongly_typed_value_in_file() {
    let f = fixture("bad_type.yaml");
    fails_naming(&["--config", &f, "config"], &[&f, "key `lr`", "abc"]);
}

#[test]
fn set_with_bad_value() {
    fails_naming(
        &["--set", "lr=abc", "config"],
        &["--set lr=abc", "key `lr`"],
    );
    fails_naming(
        &["--set", "toy.num_modez=3", "config"],
        &[
            "unknown key `toy.num_modez`",
            "did you mean `toy.num_modes`?",
        ],
    );
    fails_naming(
        &["--set", "distribution_loss=gan", "config"],
        &["distribution_loss", "`gan`"],
    );
}

#[test]
fn set_without_equals() {
    fails_naming(
        &["--set", "lr", "config"],
        &["bad --set `lr`", "no `=`", "KEY=VALUE"],
    );
    fails_naming(&["--set", "a..b=1", "config"], &["bad key `a..b`"]);
}

#[test]
fn environment_variable_errors_name_the_variable() {
    let r = finish(
        cmd(&["config"])
            .env("STILLFLOW__TOY__NUM_MODEZ", "5")
            .output()
            .expect("spawn"),
    );
    assert_no_panic(&r, &["config"]);
    assert_ne!(r.code, Some(0));
    assert!(
        r.stderr.contains(
            "environment variable STILLFLOW__TOY__NUM_MODEZ: unknown key `toy.num_modez`"
        ),
        "{}",
        r.stderr
    );
}

#[test]
fn command_line_syntax_errors() {
    fails_naming(&["--bogus"], &["--bogus"]);
    fails_naming(&["--steps", "abc", "config"], &["--steps", "abc"]);
    fails_naming(&["graph", "--format", "svg"], &["svg"]);
    fails_naming(&["check"], &["FILE"]);
}

// ---- config: good runs --------------------------------------------------------------------------

fn config_json(r: &Run) -> serde_json::Value {
    serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", r.stdout))
}

#[test]
fn config_prints_resolved_json() {
    let r = finish(
        cmd(&[
            "--set",
            "lr=3e-4",
            "--set",
            "toy.num_modes=12",
            "--set",
            "denoising_step_list=[1000, 750]",
            "--steps",
            "7",
            "--logdir",
            "/tmp/some where/it's",
            "--device",
            "cpu",
            "config",
        ])
        .env("STILLFLOW__SEED", "5")
        .output()
        .expect("spawn"),
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let j = config_json(&r);
    assert_eq!(j["lr"].as_f64(), Some(3e-4));
    assert_eq!(j["toy"]["num_modes"].as_i64(), Some(12));
    assert_eq!(j["denoising_step_list"], serde_json::json!([1000.0, 750.0]));
    assert_eq!(j["max_steps"].as_u64(), Some(7));
    assert_eq!(j["logdir"].as_str(), Some("/tmp/some where/it's"));
    assert_eq!(j["device"].as_str(), Some("cpu"));
    assert_eq!(j["seed"].as_u64(), Some(5), "from STILLFLOW__SEED");
    // The rest is the embedded default toy_dmd.
    assert_eq!(j["real_name"].as_str(), Some("gmm"));
    assert_eq!(j["distribution_loss"].as_str(), Some("dmd"));
    assert!(
        r.stderr.contains("embedded config `toy_dmd`"),
        "{}",
        r.stderr
    );
}

#[test]
fn config_path_alias_and_ignored_keys_note() {
    let r = succeeds(&["--config_path", "toy_sid", "config"]);
    assert_eq!(config_json(&r)["distribution_loss"].as_str(), Some("sid"));
    let f = fixture("self_forcing_dmd_reference.yaml");
    let r = succeeds(&["--config_path", &f, "config"]);
    let j = config_json(&r);
    assert_eq!(j["real_name"].as_str(), Some("Wan2.1-T2V-14B"));
    assert_eq!(j["lr_critic"].as_f64(), Some(4e-7));
    assert!(
        r.stderr
            .contains("keys stillflow does not use were ignored")
            && r.stderr.contains(&format!("wandb_key ({f})"))
            && r.stderr.contains("sharding_strategy"),
        "{}",
        r.stderr
    );
    // Later --config files win, like the library.
    let r = succeeds(&[
        "--config",
        &fixture("layer_a.yaml"),
        "--config_path",
        &fixture("layer_b.yaml"),
        "config",
    ]);
    let j = config_json(&r);
    assert_eq!(
        (j["seed"].as_u64(), j["beta2"].as_f64()),
        (Some(22), Some(0.9))
    );
}

// ---- check and graph ----------------------------------------------------------------------------

#[test]
fn check_bad_pipelines() {
    let f = fixture("pipeline_unknown_kind.yaml");
    let r = fails_naming(
        &["check", &f],
        &[
            &format!("{f}:5"),
            "actor `rollout`",
            "unknown actor kind `rollout_sauce`",
        ],
    );
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    let f = fixture("pipeline_missing_input.yaml");
    fails_naming(
        &["check", &f],
        &["actor `write`", "required input `in`", "not connected", &f],
    );
    fails_naming(
        &["check", "/nonexistent/pipe.yaml"],
        &["/nonexistent/pipe.yaml"],
    );
}

#[test]
fn check_good_files() {
    let r = succeeds(&["check", &repo("pipelines/teacher.yaml")]);
    assert!(r.stdout.contains("ok (pipeline `teacher`"), "{}", r.stdout);
    let r = succeeds(&["check", "self_forcing"]);
    assert!(r.stdout.contains("ok"), "{}", r.stdout);
    // A config file: its keys and its pipeline are validated.
    let r = succeeds(&["check", &repo("configs/toy_sid.yaml")]);
    assert!(r.stdout.contains("ok (config"), "{}", r.stdout);
    let f = fixture("unknown_key.yaml");
    fails_naming(&["check", &f], &[&f, "lr_critc"]);
}

#[test]
fn graph_prints_mermaid_and_dot() {
    let r = succeeds(&["graph", &repo("pipelines/teacher.yaml")]);
    assert!(r.stdout.contains("flowchart"), "{}", r.stdout);
    assert!(r.stdout.contains("data -->"), "{}", r.stdout);
    assert!(r.stdout.contains("-->"), "{}", r.stdout);
    let r = succeeds(&["graph", &repo("pipelines/teacher.yaml"), "--format", "dot"]);
    assert!(
        r.stdout.contains("digraph") && r.stdout.contains("->"),
        "{}",
        r.stdout
    );
    // Without a file: the config's pipeline (self_forcing for the default toy_dmd).
    let r = succeeds(&["graph"]);
    assert!(r.stdout.contains("-->"), "{}", r.stdout);
    let f = fixture("pipeline_unknown_kind.yaml");
    fails_naming(&["graph", &f], &[&f, "rollout_sauce"]);
}

#[test]

fn graph_into_a_closed_pipe_does_not_panic() {
    let mut child = cmd(&["graph", &repo("pipelines/self_forcing.yaml")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take()); // the reader goes away before the binary writes
    let r = finish(child.wait_with_output().expect("wait"));
    assert_no_panic(&r, &["graph"]);
    assert_ne!(r.code, Some(101));
}

// ---- runs that would train ----------------------------------------------------------------------

fn train_args<'a>(logdir: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "--steps",
        "2",
        "--set",
        "progress=false",
        "--logdir",
        logdir,
    ];
    a.extend_from_slice(extra);
    a
}

#[test]
fn missing_cuda_device_is_a_clear_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let logdir = tmp.path().join("run");
    let logdir = logdir.to_str().expect("utf-8 path");
    // cuda:7 on a CPU machine; on a machine with 8+ GPUs, the first index that does not exist.
    let n = tch::Cuda::device_count().max(0);
    let dev = format!("cuda:{}", n.max(7));
    let r = fails_naming(&train_args(logdir, &["--device", &dev]), &[&dev, "device"]);
    assert!(r.stderr.contains("CUDA device"), "{}", r.stderr);
    fails_naming(&train_args(logdir, &["--device", "tpu"]), &["tpu"]);
}

#[test]
fn unwritable_logdir() {
    fails_naming(
        &train_args("/proc/forbidden", &[]),
        &["logdir", "/proc/forbidden"],
    );
    // A path under a regular file cannot be created (read-only dirs do not stop root).
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("a_file");
    std::fs::write(&file, b"x").expect("write");
    let under = file.join("run");
    let under = under.to_str().expect("utf-8 path");
    fails_naming(&train_args(under, &[]), &["logdir", under]);
}

#[test]
fn two_step_training_run_succeeds() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let logdir = tmp.path().join("run");
    let logdir_s = logdir.to_str().expect("utf-8 path");
    succeeds(&train_args(logdir_s, &[]));
    let resolved = std::fs::read_to_string(logdir.join("config.resolved.json"))
        .expect("config.resolved.json written");
    let j: serde_json::Value = serde_json::from_str(&resolved).expect("JSON");
    assert_eq!(j["max_steps"].as_u64(), Some(2));
    assert_eq!(j["logdir"].as_str(), Some(logdir_s));
    let metrics = std::fs::read_to_string(logdir.join("metrics.jsonl")).expect("metrics.jsonl");
    assert_eq!(metrics.lines().count(), 2, "one line per step:\n{metrics}");
    assert!(Path::new(&logdir).is_dir());
}
