//! Chrome/Perfetto trace of a run: one track per actor thread (process "actors (CPU)") and, when
//! the runtime supplies CUDA-event timings, one track per CUDA stream (process "GPU streams").
//! The format is the Trace Event Format's JSON array: complete events (`"ph":"X"`, `ts`/`dur` in
//! microseconds) plus `process_name`/`thread_name` metadata events (`"ph":"M"`).

use super::stats::{lane_letter, span_name};
use crate::runtime::supervisor::Span;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Process id of the actor tracks.
pub const CPU_PID: u64 = 1;
/// Process id of the CUDA stream tracks.
pub const GPU_PID: u64 = 2;

/// One interval of GPU work on one CUDA stream, in host time since run start (convert CUDA-event
/// times with one reference event per stream recorded next to a host `Instant`).
#[derive(Clone, Debug, PartialEq)]
pub struct GpuSpan {
    /// Track name, e.g. `rollout_c` or `stream:rollout`.
    pub stream: String,
    /// Event name, e.g. `rollout_c step 12 c`.
    pub name: String,
    pub start_s: f64,
    pub secs: f64,
}

fn us(s: f64) -> f64 {
    // Round to nanoseconds: keeps the JSON short without losing anything a trace viewer shows.
    (s * 1e9).round() / 1e3
}

/// Track ids by first appearance in time, so the viewer lists tracks in pipeline order.
fn track_ids<'a>(items: impl Iterator<Item = (&'a str, f64)>) -> BTreeMap<String, u64> {
    let mut first: BTreeMap<&str, f64> = BTreeMap::new();
    for (name, t) in items {
        let e = first.entry(name).or_insert(t);
        if t < *e {
            *e = t;
        }
    }
    let mut order: Vec<(&str, f64)> = first.into_iter().collect();
    order.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(b.0)));
    order
        .into_iter()
        .enumerate()
        .map(|(i, (n, _))| (n.to_string(), i as u64 + 1))
        .collect()
}

fn metadata(events: &mut Vec<Value>, pid: u64, process: &str, tracks: &BTreeMap<String, u64>) {
    events.push(
        json!({"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": process}}),
    );
    events.push(json!({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0, "args": {"sort_index": pid}}));
    for (name, &tid) in tracks {
        events.push(json!({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": name}}));
        events.push(json!({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid, "args": {"sort_index": tid}}));
    }
}

/// The trace events (a JSON array) for actor spans and GPU spans.
pub fn trace_events(spans: &[Span], gpu: &[GpuSpan]) -> Value {
    let mut events = vec![];
    let actors = track_ids(spans.iter().map(|s| (s.actor.as_str(), s.start_s)));
    metadata(&mut events, CPU_PID, "actors (CPU)", &actors);
    for s in spans {
        events.push(json!({
            "name": span_name(s),
            "cat": "actor",
            "ph": "X",
            "pid": CPU_PID,
            "tid": actors[&s.actor],
            "ts": us(s.start_s),
            "dur": us(s.secs),
            "args": {"step": s.work.step, "lane": lane_letter(s.work.lane), "micro": s.work.micro},
        }));
    }
    if !gpu.is_empty() {
        let streams = track_ids(gpu.iter().map(|g| (g.stream.as_str(), g.start_s)));
        metadata(&mut events, GPU_PID, "GPU streams", &streams);
        for g in gpu {
            events.push(json!({
                "name": g.name,
                "cat": "gpu",
                "ph": "X",
                "pid": GPU_PID,
                "tid": streams[&g.stream],
                "ts": us(g.start_s),
                "dur": us(g.secs),
            }));
        }
    }
    Value::Array(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Lane;
    use crate::runtime::Work;

    #[test]
    fn tracks_follow_first_appearance() {
        let w = Work {
            step: 3,
            lane: Lane::Critic,
            micro: 1,
        };
        let spans = vec![
            Span {
                actor: "b".into(),
                work: w,
                start_s: 0.5,
                secs: 0.25,
            },
            Span {
                actor: "a".into(),
                work: w,
                start_s: 1.0,
                secs: 0.125,
            },
        ];
        let v = trace_events(&spans, &[]);
        let ev = v.as_array().expect("array");
        let x: Vec<&Value> = ev.iter().filter(|e| e["ph"] == "X").collect();
        assert_eq!(x[0]["tid"], 1);
        assert_eq!(x[1]["tid"], 2);
        assert_eq!(x[0]["name"], "b step 3 c micro 1");
        assert_eq!(x[0]["ts"].as_f64(), Some(500_000.0));
        assert_eq!(x[1]["dur"].as_f64(), Some(125_000.0));
        assert!(ev.iter().all(|e| e["pid"] != GPU_PID));
    }
}
