//! `plots/*.png` from synthetic `metrics.jsonl` / `eval.jsonl` files: valid PNGs of the expected
//! size whose curves are where the data says, plots without data skipped, a half-written last
//! line tolerated. (tests/sample_cli.rs checks the plots of a real run.)

use std::io::Write;
use std::path::Path;
use stillflow::report::plots::{figures, read_jsonl, render};
use stillflow::report::write_plots;

fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
    let dec = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut r = dec.read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size().unwrap()];
    let info = r.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

fn write_lines(path: &Path, lines: &[serde_json::Value], tail: &str) {
    let mut f = std::fs::File::create(path).unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
    write!(f, "{tail}").unwrap();
}

/// Rows of the image holding `colour` (their y coordinates).
fn rows_with(w: u32, px: &[u8], colour: [u8; 3]) -> Vec<u32> {
    let mut ys = vec![];
    for (y, row) in px.chunks((w * 3) as usize).enumerate() {
        if row.chunks(3).any(|p| p == colour) {
            ys.push(y as u32);
        }
    }
    ys
}

#[test]
fn plots_from_synthetic_logs() {
    let d = tempfile::tempdir().unwrap();
    let metrics: Vec<serde_json::Value> = (0..400)
        .map(|s| {
            let mut l = serde_json::json!({
                "step": s,
                // falling critic loss, rising generator loss, non-finite value once
                "critic_loss": 2.0 * (-(s as f64) / 100.0).exp() + 0.05 * ((s * 7919) % 13) as f64 / 13.0,
                "critic_grad_norm": 1.0 + (s % 5) as f64,
            });
            if s % 5 == 0 {
                l["generator_loss"] = (s as f64 / 400.0).into();
                l["generator_grad_norm"] = if s == 200 { serde_json::Value::Null } else { 0.5.into() };
            }
            l
        })
        .collect();
    write_lines(
        &d.path().join("metrics.jsonl"),
        &metrics,
        "{\"step\": 400, \"critic_lo",
    );
    let files = write_plots(d.path()).unwrap();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec!["losses.png", "grad_norms.png"],
        "no eval.jsonl, no quality plot"
    );
    let (w, h, px) = decode(&d.path().join("plots/losses.png"));
    assert_eq!((w, h), (960, 720));
    // Panel 1 (top half): generator loss in blue; panel 2 (bottom half): critic loss in orange.
    let blue = rows_with(w, &px, [31, 119, 180]);
    let orange = rows_with(w, &px, [255, 127, 14]);
    assert!(blue.len() > 100 && orange.len() > 100);
    let plot_rows = |ys: &[u32]| ys.iter().filter(|&&y| y > 40).count();
    assert!(blue.iter().filter(|&&y| y < h / 2).count() > plot_rows(&blue) / 2);
    assert!(orange.iter().filter(|&&y| y >= h / 2).count() > plot_rows(&orange) / 2);

    // Evaluations at generator versions 0, 10, …, 80 (ratio 5 → steps 0, 46, …, 396).
    std::fs::write(
        d.path().join("config.resolved.json"),
        "{\"dfake_gen_update_ratio\": 5}",
    )
    .unwrap();
    let eval: Vec<serde_json::Value> = (0..9)
        .map(|i| {
            serde_json::json!({
                "generator_version": i * 10, "sliced_w2": 1.0 / (1.0 + i as f64),
                "sliced_w2_floor": 0.05, "coverage": (i as f64 / 8.0).min(1.0), "precision": 0.9,
            })
        })
        .collect();
    write_lines(&d.path().join("eval.jsonl"), &eval, "");
    let files = write_plots(d.path()).unwrap();
    assert_eq!(files.len(), 3);
    let (w, h, px) = decode(&d.path().join("plots/quality.png"));
    assert_eq!((w, h), (960, 720));
    assert!(
        rows_with(w, &px, [44, 160, 44]).len() > 20,
        "coverage (green)"
    );
    let colours: std::collections::HashSet<&[u8]> = px.chunks(3).collect();
    assert!(colours.len() > 8);
    // Version v is plotted after the step of its update: (v − 1)·5 + 1.
    let eval_lines = read_jsonl(&d.path().join("eval.jsonl")).unwrap();
    let figs = figures(&[], &eval_lines, 5.0);
    let q = &figs.iter().find(|(n, _)| *n == "quality").unwrap().1;
    assert_eq!(q[0].series[0].points.last(), Some(&(396.0, 1.0 / 9.0)));
}

#[test]
fn no_logs_no_plots() {
    let d = tempfile::tempdir().unwrap();
    assert!(write_plots(d.path()).unwrap().is_empty());
    assert!(!d.path().join("plots").exists());
    assert!(render(&[]).unwrap().is_none());
}
