//! The supervisor never hangs: an actor that errors or panics at step k stops the whole run with
//! a message naming the actor and the step; non-finite losses are skipped, then stop the run
//! with the last good checkpoint kept.
mod common;
use common::*;
use std::time::{Duration, Instant};
use stillflow::runtime::{train, RunOptions};

/// The shipped self_forcing pipeline with a fault-injecting sink.
fn faulty_pipeline(dir: &std::path::Path, param: &str) -> String {
    let text = std::fs::read_to_string("pipelines/self_forcing.yaml").unwrap();
    let text = text.replace(
        "samples:      {kind: sink, format: none}",
        &format!("samples:      {{kind: sink, format: none, {param}: 3}}"),
    );
    assert!(text.contains(param));
    let p = dir.join("faulty.yaml");
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn run_faulty(param: &str, mode: &str) -> String {
    let d = tempfile::tempdir().unwrap();
    let pipe = faulty_pipeline(d.path(), param);
    let (pset, sset) = (format!("pipeline='{pipe}'"), format!("schedule={mode}"));
    let mut sets: Vec<&str> = SMALL.to_vec();
    sets.extend(["max_steps=50", pset.as_str(), sset.as_str()]);
    let c = cfg("toy_dmd", &d.path().join("run"), &sets);
    let t0 = Instant::now();
    // Run on a thread so a hang fails the test instead of blocking CI.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = train(
            c,
            &RunOptions {
                resume: false,
                quiet: true,
            },
        );
        let _ = tx.send(r.map(|r| r.end_step).map_err(|e| format!("{e:#}")));
    });
    let r = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the run hung");
    assert!(t0.elapsed() < Duration::from_secs(120));
    r.expect_err("the run must fail")
}

#[test]
fn error_at_step_k_stops_everything_threaded() {
    let msg = run_faulty("fail_at_step", "exact");
    assert!(
        msg.contains("`samples`") && msg.contains("step 3") && msg.contains("injected failure"),
        "{msg}"
    );
}

#[test]
fn panic_at_step_k_stops_everything_threaded() {
    let msg = run_faulty("panic_at_step", "async");
    assert!(
        msg.contains("`samples`") && msg.contains("injected panic"),
        "{msg}"
    );
}

#[test]
fn error_at_step_k_serial() {
    let msg = run_faulty("fail_at_step", "serial");
    assert!(msg.contains("`samples`") && msg.contains("step 3"), "{msg}");
}

#[test]
fn non_finite_steps_are_skipped_then_stop_with_checkpoint_kept() {
    let d = tempfile::tempdir().unwrap();
    let mut sets: Vec<&str> = SMALL.to_vec();
    // A huge critic learning rate blows the critic up within a few steps.
    sets.extend([
        "max_steps=60",
        "lr_critic=1e30",
        "max_grad_norm_critic=1e38",
        "max_nonfinite_steps=3",
        "log_iters=1",
    ]);
    let r = train(
        cfg("toy_dmd", d.path(), &sets),
        &RunOptions {
            resume: false,
            quiet: true,
        },
    );
    let msg = format!("{:#}", r.expect_err("must stop"));
    assert!(
        msg.contains("non-finite") && msg.contains("in a row"),
        "{msg}"
    );
    let newest = stillflow::checkpoint::latest_checkpoint(d.path())
        .unwrap()
        .expect("a good checkpoint is kept");
    stillflow::checkpoint::load_checkpoint(&newest).expect("and it loads");
    let lines = std::fs::read_to_string(d.path().join("metrics.jsonl")).unwrap();
    assert!(
        lines.contains("critic_nonfinite_skipped"),
        "skips are logged"
    );
}
