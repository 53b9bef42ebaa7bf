//! Stopping at step n and resuming gives the same losses and bit-identical weights, optimizer
//! state and EMA as an uninterrupted run (CPU, `exact` and `serial`), for DMD and SiD.
mod common;
use common::*;
use stillflow::runtime::summary::render;
use stillflow::runtime::{train, RunOptions};

fn check(base: &str, schedule: &str) {
    check_at(base, schedule, 7)
}

/// Stop at `stop` (a checkpoint is written there), resume and run on to step 13.
fn check_at(base: &str, schedule: &str, stop: u64) {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (d.path().join("straight"), d.path().join("resumed"));
    let mut sets: Vec<&str> = SMALL.to_vec();
    sets.extend(["max_steps=13", "ema_start_step=3", schedule]);
    let straight = run(cfg(base, &a, &sets));
    let stop_at = format!("max_steps={stop}");
    let mut first: Vec<&str> = SMALL.to_vec();
    first.extend([stop_at.as_str(), "ema_start_step=3", schedule]);
    let part1 = run(cfg(base, &b, &first));
    assert_eq!(part1.end_step, stop);
    let summary = render(&cfg(base, &b, &first), &part1);
    assert!(
        summary.contains(&format!("metrics.jsonl ({stop} lines)")),
        "{summary}"
    );
    let part2 = train(
        cfg(base, &b, &sets),
        &RunOptions {
            resume: true,
            quiet: true,
        },
    )
    .expect("resume");
    assert_eq!(part2.start_step, stop);
    // The summary counts the whole file, which the resumed run appended to.
    let summary = render(&cfg(base, &b, &sets), &part2);
    let new = 13 - stop;
    assert!(
        summary.contains(&format!("metrics.jsonl ({new} new lines, 13 in all)")),
        "{summary}"
    );
    for key in [
        "generator_loss",
        "generator_grad_norm",
        "critic_loss",
        "critic_grad_norm",
    ] {
        let mut joined = series(&part1, key);
        joined.extend(series(&part2, key));
        assert_eq!(series(&straight, key), joined, "{key} differs after resume");
    }
    let (x, y) = (final_tensors(&a), final_tensors(&b));
    assert!(
        x.iter().any(|(n, _)| n.starts_with("ema/")),
        "EMA is checkpointed"
    );
    assert!(
        x.iter().any(|(n, _)| n.contains("exp_avg_sq")),
        "AdamW moments are checkpointed"
    );
    assert_bit_identical(&x, &y);
}

#[test]
fn resume_is_exact_dmd() {
    check("toy_dmd", "schedule=exact");
}

#[test]
fn resume_is_exact_dmd_serial() {
    check("toy_dmd", "schedule=serial");
}

#[test]
// SiD's gradient reaches x_t from two actor threads (real and fake score); this once differed in
// the last bits after a resume (see `score::graph_entry`).
fn resume_is_exact_sid() {
    check("toy_sid", "schedule=exact");
}

#[test]
// Resuming right at a generator step: the first work of every generator-lane thread is an update.
fn resume_is_exact_sid_at_generator_step() {
    check_at("toy_sid", "schedule=exact", 10);
}

#[test]
fn resume_is_exact_sid_serial() {
    check("toy_sid", "schedule=serial");
}

#[test]
fn refuses_to_overwrite_and_to_resume_nothing() {
    let d = tempfile::tempdir().unwrap();
    let mut sets: Vec<&str> = SMALL.to_vec();
    sets.push("max_steps=2");
    run(cfg("toy_dmd", d.path(), &sets));
    let again = train(
        cfg("toy_dmd", d.path(), &sets),
        &RunOptions {
            resume: false,
            quiet: true,
        },
    );
    let msg = format!("{:#}", again.unwrap_err());
    assert!(
        msg.contains("already holds checkpoints") && msg.contains("--resume"),
        "{msg}"
    );
    let empty = tempfile::tempdir().unwrap();
    let r = train(
        cfg("toy_dmd", empty.path(), &sets),
        &RunOptions {
            resume: true,
            quiet: true,
        },
    );
    assert!(format!("{:#}", r.unwrap_err()).contains("no checkpoint"));
    // A checkpoint from another config is refused, naming the key.
    let mut other: Vec<&str> = SMALL.to_vec();
    other.extend(["max_steps=4", "lr=0.5"]);
    let r = train(
        cfg("toy_dmd", d.path(), &other),
        &RunOptions {
            resume: true,
            quiet: true,
        },
    );
    let msg = format!("{:#}", r.unwrap_err());
    assert!(msg.contains("lr"), "{msg}");
}
