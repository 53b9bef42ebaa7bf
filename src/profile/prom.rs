//! Prometheus metrics through the `metrics` facade and `metrics-exporter-prometheus`.
//!
//! * [`snapshot`]: the end-of-run text snapshot (`profile/metrics.prom`), recorded into a private
//!   recorder so several runs in one process (the three-schedule comparison) never mix.
//! * [`serve_prometheus`]: installs the process-wide recorder and answers `GET /metrics` on a
//!   small std::net listener thread (no tokio: the exporter's own HTTP listener needs a tokio
//!   runtime and hyper, which this crate does not otherwise use).
//! * [`record_busy`], [`record_step`], [`record_summary`]: what the runtime calls while it runs; they
//!   go to the process-wide recorder and are no-ops when none is installed.

use super::report::ProfileSummary;
use crate::runtime::supervisor::Span;
use anyhow::{bail, Context, Result};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// Histogram buckets (seconds) for every `*_seconds` metric: 100 µs … ~100 s, ×√10 apart.
pub fn seconds_buckets() -> Vec<f64> {
    (0..13).map(|i| 1e-4 * 10f64.powf(i as f64 / 2.0)).collect()
}

fn builder() -> Result<PrometheusBuilder> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("seconds".into()), &seconds_buckets())
        .context("prometheus buckets")
}

fn describe() {
    use metrics::Unit;
    metrics::describe_histogram!(
        "stillflow_actor_busy_seconds",
        Unit::Seconds,
        "Busy time of one actor per work item"
    );
    metrics::describe_histogram!(
        "stillflow_step_seconds",
        Unit::Seconds,
        "Wall time between step completions"
    );
    metrics::describe_gauge!(
        "stillflow_steps_per_second",
        "Completed steps per second of wall time"
    );
    metrics::describe_gauge!(
        "stillflow_overlap_ratio",
        "Seconds with >= 2 actors busy / wall seconds"
    );
    metrics::describe_counter!("stillflow_steps_total", "Completed training steps");
}

/// Record one run's numbers into the current recorder (global or local).
fn record_run(s: &ProfileSummary, spans: &[Span]) {
    describe();
    let sched = s.schedule.clone();
    for span in spans {
        metrics::histogram!("stillflow_actor_busy_seconds", "actor" => span.actor.clone(), "schedule" => sched.clone())
            .record(span.secs);
    }
    record_summary(s);
}

/// Set the end-of-run gauges of `s` (labelled by schedule) in the current recorder.
pub fn record_summary(s: &ProfileSummary) {
    let sched = s.schedule.clone();
    let g = |name: &'static str, v: f64| metrics::gauge!(name, "schedule" => sched.clone()).set(v);
    g("stillflow_steps_per_second", s.steps_per_s);
    g("stillflow_steady_steps_per_second", s.steady_steps_per_s);
    g("stillflow_samples_per_second", s.samples_per_s);
    g("stillflow_overlap_ratio", s.overlap);
    g(
        "stillflow_max_concurrency",
        s.concurrency.max_concurrency as f64,
    );
    g("stillflow_wall_seconds", s.wall_s);
    metrics::counter!("stillflow_steps_total", "schedule" => sched.clone()).absolute(s.steps);
    for a in &s.actors {
        let l = [("actor", a.actor.clone()), ("schedule", sched.clone())];
        metrics::gauge!("stillflow_actor_busy_ratio", &l).set(a.busy_frac);
        metrics::gauge!("stillflow_actor_busy_seconds_total", &l).set(a.busy_s);
    }
    for (lane, st) in [
        ("generator", &s.step_times.generator),
        ("critic", &s.step_times.critic_only),
    ] {
        if st.n > 0 {
            let l = [("lane", lane.to_string()), ("schedule", sched.clone())];
            metrics::gauge!("stillflow_step_time_mean_seconds", &l).set(st.mean);
        }
    }
    for m in &s.peak_memory {
        let l = [("device", m.device.clone())];
        metrics::gauge!("stillflow_peak_allocated_bytes", &l).set(m.peak_allocated as f64);
        metrics::gauge!("stillflow_peak_reserved_bytes", &l).set(m.peak_reserved as f64);
    }
    for q in &s.queue_depths {
        let l = [("edge", q.edge.clone())];
        metrics::gauge!("stillflow_queue_depth_mean", &l).set(q.mean);
        metrics::gauge!("stillflow_queue_depth_max", &l).set(q.max);
    }
    if let Some(m) = s.mfu {
        g("stillflow_mfu_ratio", m);
    }
}

/// The Prometheus text exposition of one run: per-actor busy-time histograms from the spans and
/// the summary's gauges.
pub fn snapshot(s: &ProfileSummary, spans: &[Span]) -> String {
    let recorder = match builder() {
        Ok(b) => b.build_recorder(),
        // Only fails on an empty bucket list, which `seconds_buckets` never is.
        Err(_) => PrometheusBuilder::new().build_recorder(),
    };
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || record_run(s, spans));
    handle.run_upkeep();
    handle.render()
}

/// Busy time of one work item (the runtime calls this where it records a span).
pub fn record_busy(actor: &str, secs: f64) {
    metrics::histogram!("stillflow_actor_busy_seconds", "actor" => actor.to_string()).record(secs);
}

/// Queue depth of an input edge, sampled when its consumer asks for the next item.
pub fn record_queue(edge: &str, depth: usize) {
    metrics::gauge!("stillflow_queue_depth", "edge" => edge.to_string()).set(depth as f64);
}

/// One metrics line (the runtime calls this for every line of `metrics.jsonl`): counts the step,
/// records `step_time_s` and exposes every other numeric field as gauge `stillflow_<key>`.
pub fn record_step(line: &serde_json::Value) {
    let Some(m) = line.as_object() else { return };
    metrics::counter!("stillflow_steps_total").increment(1);
    for (k, v) in m {
        let Some(x) = v.as_f64() else { continue };
        match k.as_str() {
            "step_time_s" => metrics::histogram!("stillflow_step_seconds").record(x),
            "time_s" => metrics::gauge!("stillflow_run_seconds_total").set(x),
            _ => metrics::gauge!(format!("stillflow_{}", sanitize(k))).set(x),
        }
    }
}

/// A metric-name-safe version of a metrics-line key.
fn sanitize(k: &str) -> String {
    k.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A running `/metrics` endpoint.
pub struct PrometheusServer {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    pub handle: PrometheusHandle,
}

/// Install the process-wide Prometheus recorder and serve its live text exposition at
/// `http://ADDR/metrics` from a background thread (for the life of the process). Errors if the
/// address cannot be bound or another recorder is already installed.
pub fn serve_prometheus(addr: &str) -> Result<PrometheusServer> {
    let listener =
        TcpListener::bind(addr).with_context(|| format!("--prometheus {addr}: cannot listen"))?;
    let bound = listener.local_addr()?;
    let handle = match builder()?.install_recorder() {
        Ok(h) => h,
        Err(e) => bail!("--prometheus {addr}: {e}"),
    };
    describe();
    let h = handle.clone();
    std::thread::Builder::new()
        .name("prometheus".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                // One client at a time is plenty for a scraper; a stuck client times out.
                let _ = answer(stream, &h);
            }
        })
        .context("spawning the prometheus thread")?;
    let h = handle.clone();
    std::thread::Builder::new()
        .name("prometheus-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs(5));
            h.run_upkeep();
        })
        .context("spawning the prometheus upkeep thread")?;
    Ok(PrometheusServer {
        addr: bound,
        handle,
    })
}

fn answer(mut stream: TcpStream, handle: &PrometheusHandle) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // Skip the headers (up to the blank line).
    let mut line = String::new();
    while reader.read_line(&mut line)? > 0 && line.trim_end() != "" {
        line.clear();
    }
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) = if method != "GET" {
        (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_string(),
        )
    } else if path == "/metrics" || path == "/" {
        handle.run_upkeep();
        ("200 OK", "text/plain; version=0.0.4", handle.render())
    } else {
        ("404 Not Found", "text/plain", "try /metrics\n".to_string())
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}
