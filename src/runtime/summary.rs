//! What a finished run prints: what it measured and where the outputs are.

use super::run::RunReport;
use crate::config::RunConfig;
use std::fmt::Write;

pub fn render(cfg: &RunConfig, r: &RunReport) -> String {
    let mut s = String::new();
    let steps = r.end_step - r.start_step;
    let _ = writeln!(
        s,
        "\ntrained steps {}..{} ({steps} steps) in {:.1} s: {:.2} steps/s, schedule {:?}, seed {}{}",
        r.start_step,
        r.end_step,
        r.wall_s,
        r.steps_per_s(),
        r.mode,
        r.seed,
        if r.stopped_by_signal { " (stopped by signal)" } else { "" }
    );
    let last = |k: &str| {
        r.history
            .iter()
            .rev()
            .find_map(|l| l.get(k).and_then(|v| v.as_f64()))
    };
    for k in [
        "generator_loss",
        "critic_loss",
        "generator_grad_norm",
        "critic_grad_norm",
        "dmdtrain_gradient_norm",
    ] {
        if let Some(v) = last(k) {
            let _ = writeln!(s, "  last {k:<24} {v:.5}");
        }
    }
    if !r.busy.is_empty() {
        let _ = writeln!(s, "per-actor busy time (share of wall time):");
        let mut b: Vec<(&String, &f64)> = r.busy.iter().collect();
        b.sort_by(|a, b| b.1.total_cmp(a.1));
        for (a, t) in b {
            let _ = writeln!(
                s,
                "  {a:<14} {t:8.2} s  {:5.1} %",
                100.0 * t / r.wall_s.max(1e-9)
            );
        }
    }
    let eval_path = std::path::Path::new(&cfg.logdir).join("eval.jsonl");
    if let Ok(text) = std::fs::read_to_string(&eval_path) {
        let lines: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if let (Some(a), Some(b)) = (lines.first(), lines.last()) {
            let _ = writeln!(
                s,
                "quality of the few-step generator against the exact teacher ({} samples):",
                b["n"]
            );
            let _ = writeln!(
                s,
                "  {:<16} {:>12} {:>12}",
                "metric",
                format!("v{}", a["generator_version"]),
                format!("v{}", b["generator_version"])
            );
            for k in [
                "coverage",
                "mass_err_max",
                "precision",
                "std_ratio",
                "sliced_w2",
                "cross_entropy",
            ] {
                let f = |v: &serde_json::Value| {
                    v[k].as_f64()
                        .map(|x| format!("{x:.4}"))
                        .unwrap_or_else(|| "-".into())
                };
                let _ = writeln!(s, "  {k:<16} {:>12} {:>12}", f(a), f(b));
            }
            let _ = writeln!(
                s,
                "  (exact samples give sliced_w2 ≈ {}; see eval.jsonl)",
                b["sliced_w2_floor"]
                    .as_f64()
                    .map(|x| format!("{x:.4}"))
                    .unwrap_or_default()
            );
        }
    }
    let _ = writeln!(
        s,
        "outputs in {}:",
        crate::config::display_path(&cfg.logdir).display()
    );
    let _ = writeln!(
        s,
        "  config.resolved.json, metrics.jsonl ({})",
        metrics_lines(r)
    );
    if let Some(c) = r.checkpoints.last() {
        let _ = writeln!(
            s,
            "  checkpoints: {} written, newest {}",
            r.checkpoints.len(),
            c.display()
        );
    }
    s
}

/// The line count of `metrics.jsonl`. A resumed run appends to the file, so this process's lines
/// (`history`) are not all of it: then both counts are given.
fn metrics_lines(r: &RunReport) -> String {
    let new = r.history.len();
    let path = r.logdir.join("metrics.jsonl");
    let all = std::fs::read_to_string(&path)
        .ok()
        .map(|t| t.lines().filter(|l| !l.trim().is_empty()).count());
    match all {
        Some(all) if all != new => format!("{new} new lines, {all} in all"),
        Some(all) => format!("{all} lines"),
        // Unreadable now (removed meanwhile): say what this process wrote.
        None => format!("{new} lines written"),
    }
}
