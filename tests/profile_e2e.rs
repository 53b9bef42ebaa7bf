//! End to end: train the embedded toy config for a few steps, write its profile, and compare the
//! three schedules.

use serde_json::Value;
use std::collections::BTreeSet;
use stillflow::config::{load, LoadOptions, RunConfig};
use stillflow::profile::{run_profile, write_run_profile, ProfileExtras};
use stillflow::runtime::{train, RunOptions};

fn toy(logdir: &std::path::Path, steps: u64) -> RunConfig {
    let opts = LoadOptions {
        configs: vec![],
        sets: vec![
            format!("max_steps={steps}"),
            "progress=false".into(),
            format!("logdir={}", logdir.display()),
        ],
        env: vec![],
        default_when_empty: true,
    };
    load(&opts).expect("embedded toy config").config
}

#[test]
fn toy_run_profile_is_consistent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = toy(dir.path(), 6);
    cfg.schedule = "exact".into();
    let report = train(
        cfg.clone(),
        &RunOptions {
            resume: false,
            quiet: true,
        },
    )
    .expect("train");
    let extras = ProfileExtras {
        batch_size: cfg.batch_size as u64,
        ..Default::default()
    };
    let s = write_run_profile(&report, &extras).expect("profile");

    assert_eq!(s.steps, 6);
    assert!((0.0..=1.0).contains(&s.overlap), "overlap {}", s.overlap);
    assert!((0.0..=1.0).contains(&s.utilisation));
    assert!(s.overlap <= s.utilisation + 1e-12);
    let steady = s.steady_overlap.expect("steady window");
    assert!((0.0..=1.0).contains(&steady), "{steady}");
    assert!(s.concurrency.max_concurrency >= 1);
    // Every busy second of every actor is a recorded span, and no actor is busy longer than the run.
    let from_spans: f64 = report.spans.iter().map(|x| x.secs).sum();
    let busy: f64 = s.actors.iter().map(|a| a.busy_s).sum();
    assert!(
        (busy - from_spans).abs() < 1e-6 * busy.max(1.0),
        "{busy} vs {from_spans}"
    );
    assert!(
        s.actors
            .iter()
            .all(|a| a.busy_frac > 0.0 && a.busy_frac <= 1.0),
        "{:?}",
        s.actors
    );
    // The sum of busy time is the integral of the concurrency: Σ k·time_at[k].
    let integral: f64 = s
        .concurrency
        .time_at
        .iter()
        .enumerate()
        .map(|(k, t)| k as f64 * t)
        .sum();
    assert!(
        (integral - from_spans).abs() < 1e-6 * from_spans.max(1.0),
        "{integral} vs {from_spans}"
    );
    // Ratio 5: the generator lane runs at steps 0 and 5; step 0 is left out as warm-up.
    assert_eq!(s.step_times.generator.n, 1);
    assert_eq!(s.step_times.critic_only.n, 4);
    let opt_g = s.opt_g.expect("opt_g spans");
    let opt_c = s.opt_c.expect("opt_c spans");
    assert_eq!((opt_g.n, opt_c.n), (2, 6));

    let dirp = report.logdir.join("profile");
    let trace: Value =
        serde_json::from_str(&std::fs::read_to_string(dirp.join("trace.json")).expect("trace"))
            .expect("json");
    let threads: BTreeSet<String> = trace
        .as_array()
        .expect("array")
        .iter()
        .filter(|e| e["name"] == "thread_name")
        .filter_map(|e| e["args"]["name"].as_str().map(str::to_string))
        .collect();
    let with_spans: BTreeSet<String> = report.spans.iter().map(|x| x.actor.clone()).collect();
    assert_eq!(threads, with_spans);
    for a in ["rollout_g", "rollout_c", "opt_g", "opt_c", "fake_score"] {
        assert!(threads.contains(a), "no track for {a}: {threads:?}");
    }
    let md = std::fs::read_to_string(dirp.join("summary.md")).expect("summary.md");
    assert!(md.contains("| schedule | exact |"), "{md}");
    assert!(md.contains("| opt_c |"), "{md}");
    let prom = std::fs::read_to_string(dirp.join("metrics.prom")).expect("metrics.prom");
    assert!(
        prom.contains(r#"stillflow_actor_busy_seconds_count{actor="opt_c",schedule="exact"} 6"#),
        "{prom}"
    );
}

#[test]
fn three_schedules_compare() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = toy(dir.path(), 4);
    let cmp = run_profile(
        &cfg,
        &RunOptions {
            resume: false,
            quiet: true,
        },
    )
    .expect("run_profile");
    eprintln!("{}", cmp.markdown_table());
    eprintln!("{}", cmp.runs[1].summary.markdown());
    let names: Vec<&str> = cmp
        .runs
        .iter()
        .map(|r| r.summary.schedule.as_str())
        .collect();
    assert_eq!(names, ["serial", "exact", "async(1)"]);
    assert_eq!(cmp.speedup(0), Some(1.0));
    // Serial runs one actor at a time.
    assert_eq!(cmp.runs[0].summary.concurrency.max_concurrency, 1);
    assert_eq!(cmp.runs[0].summary.overlap, 0.0);
    assert_eq!(cmp.runs[0].summary.steady_overlap, Some(0.0));
    for r in &cmp.runs {
        let o = r
            .summary
            .steady_overlap
            .expect("4 steps give a steady window");
        assert!((0.0..=1.0).contains(&o), "{o}");
    }
    // exact must reproduce serial's numbers (bit-exact on CPU).
    assert_eq!(cmp.runs[0].last_critic_loss, cmp.runs[1].last_critic_loss);
    assert_eq!(
        cmp.runs[0].last_generator_loss,
        cmp.runs[1].last_generator_loss
    );
    assert!(cmp.runs[0].last_critic_loss.is_some());
    for r in &cmp.runs {
        assert!(r.logdir.join("profile/summary.md").exists());
        assert_eq!(r.summary.steps, 4);
    }
    let table =
        std::fs::read_to_string(dir.path().join("profile_comparison.md")).expect("comparison");
    assert!(table.contains("| serial | 4 |"), "{table}");
    assert!(table.contains("| 1.00× |"), "{table}");
    assert_eq!(
        table
            .lines()
            .filter(|l| l.starts_with("| async(1) |"))
            .count(),
        1,
        "{table}"
    );
}
