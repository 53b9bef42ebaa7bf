//! The profile of a synthetic run whose numbers are known by hand: overlap from the sweep line,
//! trace events in microseconds, step times split by lane, MFU, summary.md rows and the
//! Prometheus snapshot.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use stillflow::profile::{stats, write_profile, GpuSpan, ProfileExtras, QueueDepth};
use stillflow::rng::Lane;
use stillflow::runtime::plan::Mode;
use stillflow::runtime::supervisor::Span;
use stillflow::runtime::{RunReport, Work};

fn span(actor: &str, step: u64, lane: Lane, start_s: f64, secs: f64) -> Span {
    Span {
        actor: actor.into(),
        work: Work {
            step,
            lane,
            micro: 0,
        },
        start_s,
        secs,
    }
}

/// Actors a [0,2) and b [1,3) overlap for 1 s; c [5,6) runs alone; wall 10 s.
/// Steps 0..4 complete at t = 1, 2, 5, 7 with step times 1, 1, 3, 2; the generator lane runs at
/// steps 0 and 2.
fn report() -> RunReport {
    let spans = vec![
        span("a", 0, Lane::Generator, 0.0, 2.0),
        span("b", 1, Lane::Critic, 1.0, 2.0),
        span("c", 2, Lane::Generator, 5.0, 1.0),
    ];
    let mut busy = BTreeMap::new();
    for s in &spans {
        *busy.entry(s.actor.clone()).or_insert(0.0) += s.secs;
    }
    let history = [(0, 1.0, 1.0), (1, 2.0, 1.0), (2, 5.0, 3.0), (3, 7.0, 2.0)]
        .iter()
        .map(|&(s, t, dt)| json!({"step": s, "time_s": t, "step_time_s": dt, "critic_loss": 0.5}))
        .collect();
    RunReport {
        logdir: "unused".into(),
        seed: 1,
        mode: Mode::Exact,
        start_step: 0,
        end_step: 4,
        wall_s: 10.0,
        history,
        busy,
        spans,
        gpu_spans: vec![],
        queue_depths: vec![],
        checkpoints: vec![],
        stopped_by_signal: false,
    }
}

fn extras() -> ProfileExtras {
    ProfileExtras {
        gpu_spans: vec![
            GpuSpan {
                stream: "stream:rollout".into(),
                name: "rollout_c step 1 c".into(),
                start_s: 1.0,
                secs: 0.5,
            },
            GpuSpan {
                stream: "stream:critic".into(),
                name: "fake_score step 1 c".into(),
                start_s: 1.25,
                secs: 0.5,
            },
        ],
        batch_size: 3,
        queue_depths: vec![QueueDepth {
            edge: "rollout_c.samples".into(),
            mean: 1.5,
            max: 2.0,
            capacity: 2,
        }],
        peak_memory: vec![],
        model_flops_per_step: Some(1e12),
        peak_flops: Some(1e12),
    }
}

#[test]
fn overlap_equals_hand_computed_value() {
    let r = report();
    let c = stats::span_concurrency(&r.spans);
    assert_eq!(c.overlap_s, 1.0);
    assert_eq!(c.busy_s, 4.0);
    assert_eq!(c.max_concurrency, 2);
    assert_eq!(c.time_at, vec![0.0, 3.0, 1.0]); // alone on [0,1), [2,3), [5,6)
}

#[test]
fn profile_files_hold_the_right_numbers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = write_profile(dir.path(), &report(), &extras()).expect("write_profile");

    // Summary numbers.
    assert_eq!(s.schedule, "exact");
    assert_eq!(s.steps, 4);
    assert_eq!(s.wall_s, 10.0);
    assert!((s.overlap - 0.1).abs() < 1e-12);
    assert!((s.utilisation - 0.4).abs() < 1e-12);
    // Steady window [1, 7) (first to last completion): a and b overlap on [1, 2) → 1/6.
    assert_eq!(s.steady_window_s, 6.0);
    assert!((s.steady_overlap.expect("steady overlap") - 1.0 / 6.0).abs() < 1e-12);
    assert!((s.steps_per_s - 0.4).abs() < 1e-12);
    assert!((s.samples_per_s - 1.2).abs() < 1e-12);
    assert!((s.steady_steps_per_s - 0.5).abs() < 1e-12); // 3 steps in 7 − 1 s
    let st = s.step_times;
    assert_eq!((st.generator.n, st.generator.mean), (1, 3.0)); // step 2 (step 0 is warm-up)
    assert_eq!(
        (st.critic_only.n, st.critic_only.mean, st.critic_only.median),
        (2, 1.5, 1.5)
    );
    assert_eq!(s.mfu, Some(0.5)); // 1e12 FLOPs/step × 0.5 steps/s / 1e12
    assert_eq!(s.gpu_busy["stream:rollout"], 0.5);
    // GPU overlap in the steady window: 0.25 s of the two streams together / 6 s.
    assert!((s.gpu_overlap.expect("gpu overlap") - 0.25 / 6.0).abs() < 1e-12);
    let a = s.actors.iter().find(|a| a.actor == "a").expect("actor a");
    assert_eq!((a.busy_s, a.busy_frac, a.spans.n), (2.0, 0.2, 1));

    // trace.json: one thread_name per actor and per stream, complete events in µs.
    let text = std::fs::read_to_string(dir.path().join("trace.json")).expect("trace.json");
    let v: Value = serde_json::from_str(&text).expect("trace.json parses");
    let ev = v.as_array().expect("a JSON array");
    let names = |pid: u64| -> Vec<String> {
        ev.iter()
            .filter(|e| e["ph"] == "M" && e["name"] == "thread_name" && e["pid"] == pid)
            .map(|e| e["args"]["name"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(names(1), vec!["a", "b", "c"]);
    assert_eq!(names(2), vec!["stream:critic", "stream:rollout"]);
    let x: Vec<&Value> = ev.iter().filter(|e| e["ph"] == "X").collect();
    assert_eq!(x.len(), 5);
    let b = x
        .iter()
        .find(|e| e["name"] == "b step 1 c")
        .expect("span of b");
    assert_eq!(
        (b["ts"].as_f64(), b["dur"].as_f64(), b["pid"].as_u64()),
        (Some(1e6), Some(2e6), Some(1))
    );
    let g = x
        .iter()
        .find(|e| e["name"] == "fake_score step 1 c")
        .expect("gpu span");
    assert_eq!(
        (g["ts"].as_f64(), g["dur"].as_f64(), g["pid"].as_u64()),
        (Some(1.25e6), Some(5e5), Some(2))
    );
    // Every X event's tid names a thread of its process.
    for e in &x {
        assert!(ev.iter().any(|m| m["ph"] == "M"
            && m["name"] == "thread_name"
            && m["pid"] == e["pid"]
            && m["tid"] == e["tid"]));
    }

    // summary.md rows.
    let md = std::fs::read_to_string(dir.path().join("summary.md")).expect("summary.md");
    assert!(
        md.contains("| overlap (≥ 2 actors busy / wall) | 0.100 |"),
        "{md}"
    );
    assert!(md.contains("| steps/s (steady) | 0.500 |"), "{md}");
    assert!(md.contains("| samples/s | 1.200 |"), "{md}");
    assert!(md.contains("| max concurrency | 2 |"), "{md}");
    assert!(
        md.contains("| overlap in the steady window | 0.167 |"),
        "{md}"
    );
    assert!(md.contains("| MFU | 50.0 % |"), "{md}");
    assert!(md.contains("| a | 2.0000 | 20.0 % | 1 |"), "{md}");
    assert!(md.contains("| 2 | 1.0000 | 10.0 % |"), "{md}");
    assert!(md.contains("| rollout_c.samples | 1.50 | 2 | 2 |"), "{md}");
    assert!(md.contains("Peak memory: not measured."), "{md}");

    // summary.json carries the same numbers.
    let j: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("summary.json")).expect("json"),
    )
    .expect("parses");
    assert_eq!(j["overlap"].as_f64(), Some(s.overlap));

    // metrics.prom: histograms per actor and the run's gauges.
    let prom = std::fs::read_to_string(dir.path().join("metrics.prom")).expect("metrics.prom");
    assert!(
        prom.contains("# TYPE stillflow_actor_busy_seconds histogram"),
        "{prom}"
    );
    assert!(
        prom.contains(r#"stillflow_actor_busy_seconds_count{actor="a",schedule="exact"} 1"#),
        "{prom}"
    );
    assert!(
        prom.contains(r#"stillflow_actor_busy_seconds_sum{actor="b",schedule="exact"} 2"#),
        "{prom}"
    );
    assert!(
        prom.contains(r#"stillflow_overlap_ratio{schedule="exact"} 0.1"#),
        "{prom}"
    );
    assert!(
        prom.contains(r#"stillflow_steps_per_second{schedule="exact"} 0.4"#),
        "{prom}"
    );
    assert!(
        prom.contains(r#"stillflow_mfu_ratio{schedule="exact"} 0.5"#),
        "{prom}"
    );
}

#[test]
fn empty_run_gives_zeros_not_nan() {
    let mut r = report();
    r.spans.clear();
    r.busy.clear();
    r.history.clear();
    let dir = tempfile::tempdir().expect("tempdir");
    let s = write_profile(dir.path(), &r, &ProfileExtras::default()).expect("write_profile");
    assert_eq!(
        (
            s.overlap,
            s.concurrency.max_concurrency,
            s.steady_steps_per_s
        ),
        (0.0, 0, 0.0)
    );
    assert_eq!(s.mfu, None);
    let md = std::fs::read_to_string(dir.path().join("summary.md")).expect("summary.md");
    assert!(!md.contains("NaN"), "{md}");
    assert!(md.contains("MFU: not computed"), "{md}");
}

/// Without an explicit peak, MFU is measured against one H100 per CUDA device the run allocated
/// memory on (a pipeline placed on two GPUs against two), and never against zero devices.
#[test]
fn mfu_counts_the_devices_in_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mem = |d: &str, b: u64| stillflow::profile::DeviceMemory {
        device: d.into(),
        peak_allocated: b,
        peak_reserved: b,
    };
    let mut ex = extras();
    ex.peak_flops = None;
    ex.model_flops_per_step = Some(stats::H100_BF16_PEAK_FLOPS);
    let one = write_profile(dir.path(), &report(), &ex)
        .expect("cpu")
        .mfu
        .expect("mfu");
    assert!((one - 0.5).abs() < 1e-12, "{one}"); // no devices → one
    ex.peak_memory = vec![
        mem("cuda:0", 1 << 30),
        mem("cuda:1", 1 << 20),
        mem("cuda:2", 0),
    ];
    let two = write_profile(dir.path(), &report(), &ex)
        .expect("2 gpus")
        .mfu
        .expect("mfu");
    assert!((two - 0.25).abs() < 1e-12, "{two}");
}
