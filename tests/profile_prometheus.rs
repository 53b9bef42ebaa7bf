//! The live `/metrics` endpoint. One test in its own binary: it installs the process-wide recorder.

use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use stillflow::profile::{record_busy, record_step, serve_prometheus};

fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

#[test]
fn serves_live_metrics_over_http() {
    let server = serve_prometheus("127.0.0.1:0").expect("serve");
    record_busy("rollout_c", 0.25);
    record_busy("rollout_c", 0.5);
    record_step(
        &json!({"step": 0, "time_s": 1.5, "step_time_s": 0.75, "critic_loss": 1.25, "note": "x"}),
    );
    record_step(&json!({"step": 1, "time_s": 2.0, "step_time_s": 0.5, "critic_loss": 1.0}));

    let r = get(server.addr, "/metrics");
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    assert!(
        r.contains(r#"stillflow_actor_busy_seconds_count{actor="rollout_c"} 2"#),
        "{r}"
    );
    assert!(
        r.contains(r#"stillflow_actor_busy_seconds_sum{actor="rollout_c"} 0.75"#),
        "{r}"
    );
    assert!(
        r.contains(
            r#"stillflow_actor_busy_seconds_bucket{actor="rollout_c",le="0.31622776601683794"} 1"#
        ),
        "{r}"
    );
    assert!(r.contains("stillflow_steps_total 2"), "{r}");
    assert!(r.contains("stillflow_critic_loss 1\n"), "{r}");
    assert!(r.contains("stillflow_step_seconds_count 2"), "{r}");
    assert!(r.contains("stillflow_run_seconds_total 2"), "{r}");
    assert!(!r.contains("stillflow_note"), "{r}");
    // The body length matches the header.
    let (head, body) = r.split_once("\r\n\r\n").expect("header/body");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("content length");
    assert_eq!(len, body.len());

    assert!(get(server.addr, "/nope").starts_with("HTTP/1.1 404"));
    // A second recorder cannot be installed: the error says so instead of silently dropping metrics.
    let err = serve_prometheus("127.0.0.1:0")
        .err()
        .expect("second install fails");
    assert!(format!("{err:#}").contains("--prometheus"), "{err:#}");
}
