//! The progress bar: steps/s, losses and ETA on stderr (hidden when stderr is not a terminal or
//! `progress: false`).

use super::plan::Plan;
use crate::config::RunConfig;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub fn progress_bar(cfg: &RunConfig, plan: &Plan, quiet: bool) -> Option<ProgressBar> {
    if quiet || !cfg.progress {
        return None;
    }
    let total = if plan.stop_step == u64::MAX {
        0
    } else {
        plan.stop_step - plan.start_step
    };
    let pb = if total > 0 {
        ProgressBar::new(total)
    } else {
        ProgressBar::new_spinner()
    };
    pb.set_draw_target(ProgressDrawTarget::stderr_with_hz(4));
    let style = ProgressStyle::with_template(
        "{spinner} step {pos}/{len} [{elapsed_precise}<{eta_precise}] {per_sec} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    Some(pb)
}

/// Advance by one completed step and show the latest losses.
pub fn progress_update(pb: &ProgressBar, line: &serde_json::Value) {
    pb.inc(1);
    let mut msg = String::new();
    for (key, label) in [
        ("generator_loss", "G"),
        ("critic_loss", "D"),
        ("generator_grad_norm", "|gG|"),
    ] {
        if let Some(v) = line.get(key).and_then(|v| v.as_f64()) {
            msg.push_str(&format!(" {label} {v:.4}"));
        }
    }
    if !msg.is_empty() {
        pb.set_message(msg);
    }
}
