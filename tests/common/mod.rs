//! Helpers shared by the engine tests: configs with overrides, runs in temp dirs, checkpoint reads.
#![allow(dead_code)]

use stillflow::config::{self, LoadOptions, RunConfig};
use stillflow::runtime::{train, RunOptions, RunReport};

/// The embedded toy config (or `base`) with `--set` overrides, logging into `logdir`.
pub fn cfg(base: &str, logdir: &std::path::Path, sets: &[&str]) -> RunConfig {
    let mut s: Vec<String> = sets.iter().map(|x| x.to_string()).collect();
    s.push(format!("logdir='{}'", logdir.display()));
    s.push("progress=false".into());
    let opts = LoadOptions {
        configs: vec![base.to_string()],
        sets: s,
        env: vec![],
        default_when_empty: true,
    };
    config::load(&opts).expect("config loads").config
}

/// Small and fast toy settings for engine tests.
pub const SMALL: &[&str] = &["batch_size=2", "toy.eval_samples=16", "log_iters=4"];

pub fn run(cfg: RunConfig) -> RunReport {
    train(
        cfg,
        &RunOptions {
            resume: false,
            quiet: true,
        },
    )
    .expect("run succeeds")
}

/// The tensors of the newest checkpoint, flattened to (part/name, tensor).
pub fn final_tensors(logdir: &std::path::Path) -> Vec<(String, tch::Tensor)> {
    let dir = stillflow::checkpoint::latest_checkpoint(logdir)
        .expect("list")
        .expect("a checkpoint");
    let parts = stillflow::checkpoint::load_checkpoint(&dir).expect("load");
    let mut out = vec![];
    for (part, ts) in parts.tensors {
        for (n, t) in ts {
            out.push((format!("{part}/{n}"), t));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Per-step values of `key` from a run's metrics.
pub fn series(r: &RunReport, key: &str) -> Vec<Option<f64>> {
    r.history
        .iter()
        .map(|l| l.get(key).and_then(|v| v.as_f64()))
        .collect()
}

pub fn assert_bit_identical(a: &[(String, tch::Tensor)], b: &[(String, tch::Tensor)]) {
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "tensor {na} differs");
    }
}

/// The project venv's python (`STILLFLOW_VENV`, else `./.venv`), which `make test` creates with
/// torch, PyAV and numpy; a clear failure when it is missing.
pub fn venv_python() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = std::env::var_os("STILLFLOW_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join(".venv"));
    let py = venv.join("bin/python");
    assert!(
        py.is_file(),
        "{} not found: set STILLFLOW_VENV or run `make venv` (it creates .venv with torch, PyAV \
         and numpy)",
        py.display()
    );
    py
}

/// Runs the `run-pipeline` binary in `dir` with `args`, without the caller's `STILLFLOW__*`
/// environment (so a developer's variables cannot change a test).
pub fn cli_in(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_run-pipeline"));
    c.args(args).current_dir(dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("STILLFLOW__") {
            c.env_remove(k);
        }
    }
    c.output().expect("spawn run-pipeline")
}
