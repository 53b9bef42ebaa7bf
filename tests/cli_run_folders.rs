//! The README's main command works every time: a logdir that comes from a config file gets a
//! fresh numbered folder when it already holds a run (never overwritten), `--resume` continues
//! the newest, and a logdir named on the command line keeps the explicit error.

mod common;

use std::path::Path;

fn ok(dir: &Path, args: &[&str]) -> String {
    let o = common::cli_in(dir, args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{args:?}: {err}");
    err
}

#[test]
fn repeated_runs_get_numbered_folders_and_resume_continues_the_newest() {
    let d = tempfile::tempdir().unwrap();
    let t = d.path();
    // A config file naming the logdir, as configs/toy_dmd.yaml does for `make run`.
    std::fs::write(
        t.join("c.yaml"),
        "logdir: runs/toy\nmax_steps: 2\nlog_iters: 2\nbatch_size: 2\nprogress: false\ntoy:\n  eval_samples: 16\n",
    )
    .unwrap();
    let args = ["--config", "toy_dmd", "--config", "c.yaml"];
    ok(t, &args);
    assert!(t.join("runs/toy/checkpoints").is_dir());
    let err = ok(t, &args);
    assert!(
        err.contains("runs/toy already holds a run") && err.contains("runs/toy-2"),
        "{err}"
    );
    assert!(t.join("runs/toy-2/checkpoints").is_dir());
    ok(t, &args);
    assert!(t.join("runs/toy-3/checkpoints").is_dir());
    // --resume continues the newest run (to 4 steps).
    let mut resume: Vec<&str> = args.to_vec();
    resume.extend(["--resume", "--steps", "4"]);
    let err = ok(t, &resume);
    assert!(
        err.contains("resuming the newest") && err.contains("runs/toy-3"),
        "{err}"
    );
    assert!(t.join("runs/toy-3/checkpoints/step_000004").is_dir());
    assert!(!t.join("runs/toy-4").exists());
    // A logdir named on the command line is used as written: its checkpoints are an error.
    let mut explicit: Vec<&str> = args.to_vec();
    explicit.extend(["--logdir", "runs/toy"]);
    let o = common::cli_in(t, &explicit);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("already holds checkpoints"), "{err}");
}
