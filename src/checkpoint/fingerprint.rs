//! Config fingerprint: a checksum of the canonical JSON of the resolved config, minus the keys that
//! may change on resume without changing the training (paths, step budget, checkpoint cadence…).
//! A mismatch is reported as the list of keys that differ.

use serde_json::Value;
use std::collections::BTreeMap;

use super::files::checksum64;

/// Top-level (or dotted) config keys that do not enter the fingerprint.
pub const VOLATILE_CONFIG_KEYS: &[&str] = &[
    "logdir",
    "max_steps",
    "keep_checkpoints",
    "log_iters",
    "device",
    "progress",
    "schedule",
    "max_staleness",
    "max_nonfinite_steps",
    "generator_ckpt",
    // How the optimizer state is laid out over the processes, not what it holds: checkpoints
    // are written in full either way.
    "zero_stage",
    // Where the EMA shadow lives, not what it holds.
    "ema_device",
    // What activation checkpointing keeps versus recomputes: same values and gradients.
    "checkpoint_keep_attention",
];

/// Canonical text: objects with sorted keys, no whitespace, serde_json's number formatting.
/// (serde_json may be built with `preserve_order`, so key order is not left to it.)
fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                canonical(&m[k.as_str()], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Flattens to dotted paths (`a.b`, `list[2]`) → canonical value text, skipping volatile keys.
pub fn flatten(v: &Value, volatile: &[&str]) -> BTreeMap<String, String> {
    fn go(v: &Value, path: &str, volatile: &[&str], out: &mut BTreeMap<String, String>) {
        if volatile.contains(&path) {
            return;
        }
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, x) in m {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    go(x, &p, volatile, out);
                }
            }
            other => {
                let mut s = String::new();
                canonical(other, &mut s);
                out.insert(path.to_string(), s);
            }
        }
    }
    let mut out = BTreeMap::new();
    go(v, "", volatile, &mut out);
    out
}

/// Fingerprint of a config (hex), ignoring `volatile` keys.
pub fn config_fingerprint_with(config: &Value, volatile: &[&str]) -> String {
    let flat = flatten(config, volatile);
    let mut s = String::new();
    for (k, v) in &flat {
        s.push_str(k);
        s.push('=');
        s.push_str(v);
        s.push('\n');
    }
    format!("{:016x}", checksum64(s.as_bytes()))
}

/// Fingerprint with [`VOLATILE_CONFIG_KEYS`].
pub fn config_fingerprint(config: &Value) -> String {
    config_fingerprint_with(config, VOLATILE_CONFIG_KEYS)
}

/// Human-readable differences `key: checkpoint X, now Y` (at most `max` lines, then a count).
pub fn config_diff(saved: &Value, now: &Value, volatile: &[&str], max: usize) -> Vec<String> {
    let a = flatten(saved, volatile);
    let b = flatten(now, volatile);
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut out = Vec::new();
    let mut n = 0;
    for k in keys {
        let (x, y) = (a.get(k), b.get(k));
        if x == y {
            continue;
        }
        n += 1;
        if out.len() < max {
            let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(absent)".into());
            out.push(format!("`{k}`: checkpoint {}, now {}", show(x), show(y)));
        }
    }
    if n > out.len() {
        out.push(format!("and {} more", n - out.len()));
    }
    out
}
