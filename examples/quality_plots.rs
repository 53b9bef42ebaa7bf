//! The PNG plots of docs/QUALITY.md (called by scripts/quality_bench.sh), drawn with the project's
//! own plotting module (`report::plots`, bitmap font, no system fonts or Python packages).
//!
//! Usage: `quality_plots OUT_DIR IMG_DIR`, OUT_DIR as written by the benchmark:
//! `{video,ring,imbalanced}_{dmd,sid}_{1,4}/eval.jsonl`, `teacher_<problem>.jsonl`,
//! `stale_<K>/{eval,metrics}.jsonl`. Writes IMG_DIR/quality_students.png (sliced-W2 against
//! training steps per problem, with the 50-step teacher and the exact-sample floor) and
//! IMG_DIR/quality_staleness.png (sliced-W2 against steps and against wall time per K).

use anyhow::{bail, Context, Result};
use plotters::style::RGBColor;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use stillflow::report::image::write_png;
use stillflow::report::plots::{read_jsonl, render, version_step, Panel, Series};

/// Critic updates per generator update of the toy configs (converts versions to steps).
const RATIO: f64 = 5.0;
const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];
const GREY: RGBColor = RGBColor(110, 110, 110);
const BLACK: RGBColor = RGBColor(0, 0, 0);

fn series(label: String, points: Vec<(f64, f64)>, color: RGBColor) -> Series {
    Series {
        label,
        points,
        color,
        smooth: false,
    }
}

fn num(v: &Value, k: &str) -> Option<f64> {
    v.get(k).and_then(Value::as_f64)
}

/// A horizontal reference line over [0, x_max].
fn flat(label: String, y: f64, x_max: f64, color: RGBColor) -> Series {
    series(label, vec![(0.0, y), (x_max, y)], color)
}

fn students_panel(out: &Path, prob: &str) -> Result<Panel> {
    let mut s = vec![];
    let mut x_max: f64 = 1.0;
    for (i, (loss, steps)) in [("dmd", 1), ("dmd", 4), ("sid", 1), ("sid", 4)]
        .iter()
        .enumerate()
    {
        let ev = read_jsonl(&out.join(format!("{prob}_{loss}_{steps}/eval.jsonl")))?;
        let pts: Vec<(f64, f64)> = ev
            .iter()
            .filter_map(|e| {
                Some((
                    version_step(num(e, "generator_version")?, RATIO),
                    num(e, "sliced_w2")?,
                ))
            })
            .collect();
        x_max = pts.iter().map(|p| p.0).fold(x_max, f64::max);
        let label = format!("{} {steps}-step", loss.to_uppercase());
        s.push(series(label, pts, PALETTE[i]));
    }
    let teacher = read_jsonl(&out.join(format!("teacher_{prob}.jsonl")))?;
    for t in &teacher {
        if let (Some(steps), Some(w)) = (num(t, "steps"), num(t, "sliced_w2")) {
            let color = if steps >= 50.0 { BLACK } else { PALETTE[4] };
            s.push(flat(format!("teacher Euler {steps}"), w, x_max, color));
        }
    }
    if let Some(f) = teacher.first().and_then(|t| num(t, "sliced_w2_floor")) {
        s.push(flat("exact-sample floor".into(), f, x_max, GREY));
    }
    Ok(Panel {
        title: format!("{prob}: sliced-W2 against training steps"),
        y_label: "sliced_w2".into(),
        series: s,
    })
}

/// Wall time (s) at which each generator version first appears in `metrics.jsonl`.
fn version_times(metrics: &[Value]) -> BTreeMap<i64, f64> {
    let mut t = BTreeMap::new();
    for m in metrics {
        if let (Some(v), Some(s)) = (num(m, "generator_version"), num(m, "time_s")) {
            t.entry(v as i64).or_insert(s);
        }
    }
    t
}

fn staleness_panels(out: &Path) -> Result<Vec<Panel>> {
    let (mut by_step, mut by_time) = (vec![], vec![]);
    for (i, k) in [0, 1, 2, 4, 8].iter().enumerate() {
        let dir = out.join(format!("stale_{k}"));
        let ev = read_jsonl(&dir.join("eval.jsonl"))?;
        let times = version_times(&read_jsonl(&dir.join("metrics.jsonl"))?);
        let (mut a, mut b) = (vec![], vec![]);
        for e in &ev {
            let (Some(v), Some(w)) = (num(e, "generator_version"), num(e, "sliced_w2")) else {
                continue;
            };
            a.push((version_step(v, RATIO), w));
            // Version 0 exists before the first step.
            let t = if v < 1.0 {
                Some(0.0)
            } else {
                times.get(&(v as i64)).copied()
            };
            if let Some(t) = t {
                b.push((t, w));
            }
        }
        by_step.push(series(format!("K={k}"), a, PALETTE[i]));
        by_time.push(series(format!("K={k}"), b, PALETTE[i]));
    }
    Ok(vec![
        Panel {
            title: "async, max_staleness K: sliced-W2 against steps".into(),
            y_label: "sliced_w2".into(),
            series: by_step,
        },
        Panel {
            title: "async, max_staleness K: sliced-W2 against wall time (s)".into(),
            y_label: "sliced_w2".into(),
            series: by_time,
        },
    ])
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [out, img] = args.as_slice() else {
        bail!("usage: quality_plots OUT_DIR IMG_DIR");
    };
    let (out, img) = (Path::new(out), Path::new(img));
    std::fs::create_dir_all(img).with_context(|| format!("creating {}", img.display()))?;
    let panels = ["video", "ring", "imbalanced"]
        .iter()
        .map(|p| students_panel(out, p))
        .collect::<Result<Vec<_>>>()?;
    let figures = [
        ("quality_students.png", panels),
        ("quality_staleness.png", staleness_panels(out)?),
    ];
    for (name, panels) in figures {
        let path = img.join(name);
        match render(&panels)? {
            Some(png) => {
                write_png(&path, &png)?;
                println!("{}", path.display());
            }
            None => eprintln!("{name}: no data, not written"),
        }
    }
    Ok(())
}
