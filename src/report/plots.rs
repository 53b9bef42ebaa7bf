//! `logdir/plots/*.png`: training curves from `metrics.jsonl` and quality curves from `eval.jsonl`,
//! redrawn at every checkpoint and at the end of a run (DESIGN §8).
//!
//! - `losses.png`: generator_loss and critic_loss vs step;
//! - `grad_norms.png`: generator and critic gradient norms (before clipping) vs step;
//! - `quality.png` (runs with an exact toy teacher): sliced-W2 with its exact-vs-exact noise
//!   floor, and mode coverage / precision vs step.
//!
//! Raw per-step values are drawn faintly with a moving average on top, so trends stay readable
//! in noisy losses. Text uses the embedded bitmap font (`glyph.rs`): no system fonts needed.

use super::glyph::GlyphBackend;
use super::image::{write_png, Rgb};
use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

const W: u32 = 960;
const PANEL_H: u32 = 360;
/// Most points drawn per series (longer series are thinned evenly; the moving average uses all).
const MAX_POINTS: usize = 3000;

/// One curve: (x, y) points, a legend label and a colour.
#[derive(Clone, Debug)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub color: RGBColor,
    /// Draw the raw points faintly and a moving average on top.
    pub smooth: bool,
}

/// One chart: a title, a y-axis label and its curves (sharing the axes).
#[derive(Clone, Debug)]
pub struct Panel {
    pub title: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(255, 127, 14);
const GREEN: RGBColor = RGBColor(44, 160, 44);
const GREY: RGBColor = RGBColor(110, 110, 110);

/// Parsed lines of a JSON-lines file; unparsable lines (e.g. one being written right now) are
/// skipped. A missing file gives no lines.
pub fn read_jsonl(path: &Path) -> Result<Vec<Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(anyhow!("reading {}: {e}", path.display())),
    };
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// Finite (x, y) pairs of `y_key` against `x_key` (mapped by `fx`), in file order.
pub fn series_of(
    lines: &[Value],
    x_key: &str,
    y_key: &str,
    fx: impl Fn(f64) -> f64,
) -> Vec<(f64, f64)> {
    lines
        .iter()
        .filter_map(|l| {
            let x = fx(l.get(x_key)?.as_f64()?);
            let y = l.get(y_key)?.as_f64()?;
            (x.is_finite() && y.is_finite()).then_some((x, y))
        })
        .collect()
}

/// Centred moving average over `2·half + 1` points (shorter at the ends).
pub fn moving_average(p: &[(f64, f64)], half: usize) -> Vec<(f64, f64)> {
    let mut prefix = vec![0.0; p.len() + 1];
    for (i, (_, y)) in p.iter().enumerate() {
        prefix[i + 1] = prefix[i] + y;
    }
    (0..p.len())
        .map(|i| {
            let lo = i.saturating_sub(half);
            let hi = (i + half + 1).min(p.len());
            (p[i].0, (prefix[hi] - prefix[lo]) / (hi - lo) as f64)
        })
        .collect()
}

fn thin(p: &[(f64, f64)]) -> Vec<(f64, f64)> {
    if p.len() <= MAX_POINTS {
        return p.to_vec();
    }
    let stride = p.len().div_ceil(MAX_POINTS);
    let mut out: Vec<(f64, f64)> = p.iter().step_by(stride).copied().collect();
    if let Some(last) = p.last() {
        if out.last() != Some(last) {
            out.push(*last);
        }
    }
    out
}

/// Axis labels: at most 4 significant digits without trailing zeros, integers as integers,
/// scientific notation only where plain digits would be unreadable.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        return "0".into();
    }
    if !(1e-3..1e5).contains(&a) {
        return format!("{v:.1e}");
    }
    if v.fract() == 0.0 {
        return format!("{v:.0}");
    }
    let decimals = (3 - a.log10().floor() as i32).clamp(0, 6) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

fn bounds(panel: &Panel) -> Option<(f64, f64, f64, f64)> {
    let pts = panel.series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    let mut any = false;
    for &(x, y) in pts {
        any = true;
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !any {
        return None;
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let pad = if y1 > y0 {
        0.05 * (y1 - y0)
    } else {
        0.05 * y0.abs().max(1e-3)
    };
    Some((x0, x1, y0 - pad, y1 + pad))
}

fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, panel: &Panel) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing `{}`: {e}", panel.title);
    let Some((x0, x1, y0, y1)) = bounds(panel) else {
        return Ok(());
    };
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 28))
        .margin(12)
        .margin_right(28)
        .x_label_area_size(40)
        .y_label_area_size(84)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(panel.y_label.as_str())
        .label_style(("sans-serif", 12))
        .axis_desc_style(("sans-serif", 12))
        .x_label_formatter(&|v| fmt_num(*v))
        .y_label_formatter(&|v| fmt_num(*v))
        .light_line_style(RGBColor(240, 240, 240))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()
        .map_err(e)?;
    for s in &panel.series {
        if s.points.is_empty() {
            continue;
        }
        let c = s.color;
        let main = if s.smooth && s.points.len() > 8 {
            chart
                .draw_series(LineSeries::new(thin(&s.points), c.mix(0.25)))
                .map_err(e)?;
            thin(&moving_average(&s.points, (s.points.len() / 60).max(2)))
        } else {
            thin(&s.points)
        };
        let single = main.len() == 1;
        chart
            .draw_series(LineSeries::new(main.clone(), c.stroke_width(2)))
            .map_err(e)?
            .label(s.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        if single || main.len() <= 40 {
            // Few points (evaluations): mark each one.
            chart
                .draw_series(
                    main.iter()
                        .map(|&(x, y)| Circle::new((x, y), 3, c.filled())),
                )
                .map_err(e)?;
        }
    }
    chart
        .configure_series_labels()
        // 18: plotters sizes the legend box with its font-free estimate (0.455·size per
        // character), which then matches the 8-pixel glyphs.
        .label_font(("sans-serif", 18))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(160, 160, 160))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(e)?;
    Ok(())
}

/// Render `panels` stacked vertically into one image (panels without data are left out);
/// `None` if no panel has data.
pub fn render(panels: &[Panel]) -> Result<Option<Rgb>> {
    let panels: Vec<&Panel> = panels
        .iter()
        .filter(|p| p.series.iter().any(|s| !s.points.is_empty()))
        .collect();
    if panels.is_empty() {
        return Ok(None);
    }
    let h = PANEL_H * panels.len() as u32;
    let mut buf = vec![255u8; (W * h * 3) as usize];
    {
        let root = GlyphBackend::with_buffer(&mut buf, (W, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("plot: {e}"))?;
        let areas = root.split_evenly((panels.len(), 1));
        for (area, p) in areas.iter().zip(&panels) {
            draw_panel(area, p)?;
        }
        root.present().map_err(|e| anyhow!("plot: {e}"))?;
    }
    Ok(Some(Rgb { w: W, h, data: buf }))
}

fn panel(title: &str, y_label: &str, series: Vec<Series>) -> Panel {
    Panel {
        title: title.into(),
        y_label: y_label.into(),
        series,
    }
}

fn curve(label: &str, points: Vec<(f64, f64)>, color: RGBColor, smooth: bool) -> Series {
    Series {
        label: label.into(),
        points,
        color,
        smooth,
    }
}

/// Where an evaluation of generator version v goes on the step axis: version v ≥ 1 is made by the
/// generator update at the start of step (v − 1)·ratio, so it is plotted once that step is done,
/// at (v − 1)·ratio + 1 completed steps; version 0 (the initial weights) at 0.
pub fn version_step(v: f64, ratio: f64) -> f64 {
    if v < 1.0 {
        0.0
    } else {
        (v - 1.0) * ratio + 1.0
    }
}

/// The panels of each plot file, from the lines of `metrics.jsonl` and `eval.jsonl`.
/// `ratio` (dfake_gen_update_ratio) converts the evaluator's generator versions to steps.
pub fn figures(metrics: &[Value], eval: &[Value], ratio: f64) -> Vec<(&'static str, Vec<Panel>)> {
    let m = |k: &str| series_of(metrics, "step", k, |s| s);
    let q = |k: &str| series_of(eval, "generator_version", k, |v| version_step(v, ratio));
    vec![
        (
            "losses",
            vec![
                panel(
                    "generator loss",
                    "generator_loss",
                    vec![curve("generator_loss", m("generator_loss"), BLUE, true)],
                ),
                panel(
                    "critic loss",
                    "critic_loss",
                    vec![curve("critic_loss", m("critic_loss"), ORANGE, true)],
                ),
            ],
        ),
        (
            "grad_norms",
            vec![
                panel(
                    "generator gradient norm (before clipping)",
                    "grad norm",
                    vec![curve(
                        "generator_grad_norm",
                        m("generator_grad_norm"),
                        BLUE,
                        true,
                    )],
                ),
                panel(
                    "critic gradient norm (before clipping)",
                    "grad norm",
                    vec![curve(
                        "critic_grad_norm",
                        m("critic_grad_norm"),
                        ORANGE,
                        true,
                    )],
                ),
            ],
        ),
        (
            "quality",
            vec![
                panel(
                    "sliced W2 to the exact teacher (lower is better)",
                    "sliced W2",
                    vec![
                        curve("sliced_w2", q("sliced_w2"), BLUE, false),
                        curve("exact-vs-exact floor", q("sliced_w2_floor"), GREY, false),
                    ],
                ),
                panel(
                    "mode coverage and precision (1 is best)",
                    "fraction",
                    vec![
                        curve("coverage", q("coverage"), GREEN, false),
                        curve("precision", q("precision"), ORANGE, false),
                    ],
                ),
            ],
        ),
    ]
}

/// Redraw `logdir/plots/*.png` from the run's `metrics.jsonl` and `eval.jsonl`; returns the files
/// written (a plot with no data yet is skipped).
pub fn write_plots(logdir: &Path) -> Result<Vec<PathBuf>> {
    let metrics = read_jsonl(&logdir.join("metrics.jsonl"))?;
    let eval = read_jsonl(&logdir.join("eval.jsonl"))?;
    let ratio = std::fs::read_to_string(logdir.join("config.resolved.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|c| c.get("dfake_gen_update_ratio")?.as_f64())
        .unwrap_or(1.0);
    let dir = logdir.join("plots");
    let mut out = vec![];
    for (name, panels) in figures(&metrics, &eval, ratio) {
        if let Some(img) = render(&panels)? {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let path = dir.join(format!("{name}.png"));
            write_png(&path, &img)?;
            out.push(path);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moving_average_is_exact_on_lines_and_shorter_at_ends() {
        let p: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 2.0 * i as f64)).collect();
        let s = moving_average(&p, 2);
        assert_eq!(s[5], (5.0, 10.0));
        assert_eq!(s[0], (0.0, 2.0)); // mean of 0, 2, 4
    }

    #[test]
    fn series_skip_missing_and_null_values() {
        let lines: Vec<Value> = vec![
            serde_json::json!({"step": 0, "a": 1.0}),
            serde_json::json!({"step": 1}),
            serde_json::json!({"step": 2, "a": null}),
            serde_json::json!({"step": 3, "a": 4.0}),
        ];
        assert_eq!(
            series_of(&lines, "step", "a", |x| 2.0 * x),
            vec![(0.0, 1.0), (6.0, 4.0)]
        );
        assert_eq!(version_step(0.0, 5.0), 0.0);
        assert_eq!(version_step(3.0, 5.0), 11.0);
    }

    #[test]
    fn number_labels_stay_short() {
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_num(1234.0), "1234");
        assert_eq!(fmt_num(10.0), "10");
        assert_eq!(fmt_num(0.9), "0.9");
        assert_eq!(fmt_num(1.25), "1.25");
        assert_eq!(fmt_num(0.012345), "0.01235");
        assert_eq!(fmt_num(2.5e-5), "2.5e-5");
    }
}
