//! SVG plots with plotters: loss curves (validation with a seed band, training dashed; one
//! panel per value of the fields other than the attention), the quality vs KV-cache Pareto plot
//! (log x; accuracy for tasks) and accuracy against a swept number. Legends sit in their own
//! column to the right of the plots.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::stats::std;
use crate::tables::{field_text, Group};

const COLORS: &[RGBColor] = &[
    RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(44, 160, 44), RGBColor(214, 39, 40),
    RGBColor(148, 103, 189), RGBColor(140, 86, 75), RGBColor(227, 119, 194), RGBColor(127, 127, 127),
    RGBColor(188, 189, 34), RGBColor(23, 190, 207),
];

fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plot: {e:?}")
}

/// Sizes for print: a plot (one panel and its legend) is 660 px wide; plotters writes these
/// font sizes × 0.81 into the SVG (13–16 px), so printed 5.5 in wide (one column of a
/// single-column paper) the smallest text is about 7.7 pt. Up to three facets stack in one
/// column to keep that width.
const PANEL_W: u32 = 470;
const PANEL_H: u32 = 320;
const LEGEND_W: u32 = 190;
const TITLE_PX: u32 = 20;
const AXIS_PX: u32 = 18;
const TICK_PX: u32 = 16;
const LEGEND_PX: u32 = 16;

/// The chart frame every panel shares: title, margins, axis label areas.
fn styled<'a, DB: DrawingBackend>(root: &'a DrawingArea<DB, plotters::coord::Shift>, title: &str) -> ChartBuilder<'a, 'static, DB> {
    let mut builder = ChartBuilder::on(root);
    builder.caption(title, ("sans-serif", TITLE_PX)).margin(10).x_label_area_size(40).y_label_area_size(58);
    builder
}

fn padded(lo: f64, hi: f64) -> std::ops::Range<f64> {
    let pad = ((hi - lo) * 0.08).max(1e-3);
    (lo - pad)..(hi + pad)
}

/// A legend entry: its colour, its text, and its key: a line, or marker shape `n` ([`marker`]).
struct Entry {
    color: RGBColor,
    text: String,
    marker: Option<usize>,
}

/// Marker shape `shape` (circle, triangle, square, cross, cycling) at `at`.
fn marker<DB: DrawingBackend, C: Into<ShapeStyle>>(area: &DrawingArea<DB, plotters::coord::Shift>, shape: usize, at: (i32, i32), style: C) -> Result<()> {
    let style: ShapeStyle = style.into();
    let (x, y) = at;
    match shape % 4 {
        0 => area.draw(&Circle::new(at, 5, style.filled())),
        1 => area.draw(&Polygon::new(vec![(x, y - 6), (x - 6, y + 5), (x + 6, y + 5)], style.filled())),
        2 => area.draw(&Rectangle::new([(x - 5, y - 5), (x + 5, y + 5)], style.filled())),
        _ => area.draw(&Cross::new(at, 5, style.stroke_width(2))),
    }
    .map_err(err)
}

/// Ticks for a log axis over `lo..hi`: 1, 2 and 5 times the powers of ten inside it (plotters
/// alone draws only the powers of ten, often a single tick); the data's own values `xs` when
/// that gives fewer than two.
fn log_ticks(lo: f64, hi: f64, xs: &[f64]) -> Vec<f64> {
    let ticks = nice_log_ticks(lo, hi);
    if ticks.len() >= 2 {
        return ticks;
    }
    let mut xs: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite() && *x > 0.0).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    xs
}

/// A tick label: an integer as one, anything else with three significant digits.
fn tick_label(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e9 {
        format!("{x:.0}")
    } else {
        format!("{x:.3e}").parse::<f64>().map(|v| v.to_string()).unwrap_or_default()
    }
}

fn nice_log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut ticks = Vec::new();
    for e in (lo.log10().floor() as i32)..=(hi.log10().ceil() as i32) {
        for m in [1.0, 2.0, 5.0] {
            let v = m * 10f64.powi(e);
            if v >= lo && v <= hi {
                ticks.push(v);
            }
        }
    }
    ticks
}

/// Draws the legend in its own area to the right of the plots, so it never covers data.
/// Long entries are cut to the width with "…".
fn draw_legend<DB: DrawingBackend>(area: &DrawingArea<DB, plotters::coord::Shift>, entries: &[Entry], notes: &[&str]) -> Result<()> {
    let style = ("sans-serif", LEGEND_PX).into_font().color(&BLACK);
    let max_chars = ((LEGEND_W - 36) / 8) as usize;
    let mut y = 40;
    for e in entries {
        let c = e.color;
        match e.marker {
            Some(shape) => marker(area, shape, (14, y), c)?,
            None => area.draw(&PathElement::new(vec![(4, y), (26, y)], c.stroke_width(3))).map_err(err)?,
        }
        let text = if e.text.chars().count() > max_chars { format!("{}…", e.text.chars().take(max_chars - 1).collect::<String>()) } else { e.text.clone() };
        area.draw(&Text::new(text, (32, y - LEGEND_PX as i32 / 2), style.clone())).map_err(err)?;
        y += LEGEND_PX as i32 + 8;
    }
    y += 6;
    for note in notes {
        area.draw(&Text::new(note.to_string(), (4, y - LEGEND_PX as i32 / 2), style.clone())).map_err(err)?;
        y += LEGEND_PX as i32 + 6;
    }
    Ok(())
}

/// How a plot splits its groups: one colour per value of the line field (the attention when it
/// varies, else the first varying field) and one panel per combination of the other varying
/// fields ("small multiples"), so a label names only what differs within its panel.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub line_field: Option<String>,
    pub facet_fields: Vec<String>,
}

/// The [`Layout`] of `groups`.
pub fn layout(groups: &[Group]) -> Layout {
    let fields: Vec<String> = groups.first().map(|g| g.fields.keys().cloned().collect()).unwrap_or_default();
    let line_field = if fields.iter().any(|f| f == "model.attention") { Some("model.attention".to_string()) } else { fields.first().cloned() };
    let facet_fields = fields.into_iter().filter(|f| Some(f) != line_field.as_ref()).collect();
    Layout { line_field, facet_fields }
}

fn short(field: &str) -> &str {
    field.rsplit('.').next().unwrap_or(field)
}

impl Layout {
    /// The group's value of the line field (its attention label for the attention).
    fn line_name(&self, g: &Group) -> String {
        match self.line_field.as_deref() {
            Some("model.attention") => attention_name(g),
            Some(f) => format!("{}={}", short(f), g.fields[f]),
            None => g.label.clone(),
        }
    }

    /// The group's panel: its values of the facet fields.
    fn facet_name(&self, g: &Group) -> String {
        self.facet_fields.iter().map(|f| format!("{}={}", short(f), g.fields[f])).collect::<Vec<_>>().join(", ")
    }
}

/// Distinct values in first-seen order.
fn distinct(values: impl Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for v in values {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

/// Validation loss against step, one panel per facet: per line value the mean over seeds
/// (line with markers at the evaluations), the min–max over seeds (band) and the mean logged
/// training loss (dashed). Returns the number of panels drawn.
pub fn loss_svg(groups: &[Group], path: &Path) -> Result<usize> {
    let (mut x_max, mut y_lo, mut y_hi) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for g in groups {
        for &(s, _, lo, hi) in &g.curve {
            (x_max, y_lo, y_hi) = (x_max.max(s as f64), y_lo.min(lo), y_hi.max(hi));
        }
        for &(s, v) in &g.train_curve {
            (x_max, y_lo, y_hi) = (x_max.max(s as f64), y_lo.min(v), y_hi.max(v));
        }
    }
    if !y_lo.is_finite() {
        return Ok(0);
    }
    let layout = layout(groups);
    let lines = distinct(groups.iter().map(|g| layout.line_name(g)));
    let facets = distinct(groups.iter().map(|g| layout.facet_name(g)));
    let cols = if facets.len() <= 3 { 1 } else { 2 };
    let rows = facets.len().div_ceil(cols);
    let root = SVGBackend::new(path, (cols as u32 * PANEL_W + LEGEND_W, rows as u32 * PANEL_H)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (plots, legend) = root.split_horizontally(cols as u32 * PANEL_W);
    for (panel, facet) in plots.split_evenly((rows, cols)).iter().zip(&facets) {
        let title = if facet.is_empty() { "Loss (mean over seeds)".to_string() } else { facet.clone() };
        let mut chart = styled(panel, &title).build_cartesian_2d(0f64..x_max, padded(y_lo, y_hi)).map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("training step")
            .y_desc("loss (nats/token)")
            .axis_desc_style(("sans-serif", AXIS_PX))
            .label_style(("sans-serif", TICK_PX))
            .x_labels(6)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .draw()
            .map_err(err)?;
        for g in groups.iter().filter(|g| layout.facet_name(g) == *facet) {
            let c = color(lines.iter().position(|l| *l == layout.line_name(g)).unwrap_or(0));
            if g.runs.len() > 1 {
                let mut band: Vec<(f64, f64)> = g.curve.iter().map(|&(s, _, lo, _)| (s as f64, lo)).collect();
                band.extend(g.curve.iter().rev().map(|&(s, _, _, hi)| (s as f64, hi)));
                chart.draw_series(std::iter::once(Polygon::new(band, c.mix(0.15)))).map_err(err)?;
            }
            let train: Vec<(f64, f64)> = g.train_curve.iter().map(|&(s, v)| (s as f64, v)).collect();
            chart.draw_series(DashedLineSeries::new(train, 4, 3, c.mix(0.8).stroke_width(1))).map_err(err)?;
            let val: Vec<(f64, f64)> = g.curve.iter().map(|&(s, m, _, _)| (s as f64, m)).collect();
            chart.draw_series(LineSeries::new(val.clone(), c.stroke_width(2))).map_err(err)?;
            chart.draw_series(val.into_iter().map(|p| Circle::new(p, 3, c.filled()))).map_err(err)?;
        }
    }
    let entries: Vec<Entry> = lines.iter().enumerate().map(|(i, l)| Entry { color: color(i), text: l.clone(), marker: None }).collect();
    let seeds = groups.iter().map(|g| g.runs.len()).max().unwrap_or(1);
    let n = format!("n ≤ {seeds} seeds per line");
    draw_legend(&legend, &entries, &["solid, dots: validation", "band: min–max over seeds", "dashed: training loss", &n])?;
    root.present().map_err(err)?;
    Ok(facets.len())
}

/// The Pareto view: quality against KV-cache bytes per token (log x), mean ± std over seeds.
/// Quality is the test accuracy for synthetic tasks (higher is better), else the best
/// validation loss.
pub fn pareto_svg(groups: &[Group], path: &Path) -> Result<()> {
    let accuracy = crate::tables::has_accuracy(groups);
    let quality = |g: &Group| if accuracy { (100.0 * g.accuracy_mean(), 100.0 * std(&g.accuracy)) } else { (g.best_mean(), g.best_std()) };
    let (mut x_lo, mut x_hi, mut y_lo, mut y_hi) = (f64::INFINITY, 0.0f64, f64::INFINITY, f64::NEG_INFINITY);
    // A group with no value (every seed diverged, or no accuracy) has no point to draw.
    let drawn: Vec<&Group> = groups.iter().filter(|g| quality(g).0.is_finite() && g.kv_bytes > 0.0).collect();
    for g in &drawn {
        let (m, s) = quality(g);
        let s = if s.is_finite() { s } else { 0.0 };
        (x_lo, x_hi) = (x_lo.min(g.kv_bytes), x_hi.max(g.kv_bytes));
        (y_lo, y_hi) = (y_lo.min(m - s), y_hi.max(m + s));
    }
    if !(x_lo > 0.0 && y_lo.is_finite()) {
        return Ok(());
    }
    let root = SVGBackend::new(path, (PANEL_W + LEGEND_W, PANEL_H + 40)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (plot, legend) = root.split_horizontally(PANEL_W);
    let (title, y_desc, y_range) = if accuracy {
        ("Test accuracy vs KV cache", "test accuracy (%)", 0f64..(y_hi * 1.05).clamp(1.0, 105.0))
    } else {
        ("Best val loss vs KV cache", "best val loss (nats/token)", padded(y_lo, y_hi))
    };
    let x_range = (x_lo / 1.5, x_hi * 1.5);
    let kv: Vec<f64> = drawn.iter().map(|g| g.kv_bytes).collect();
    let mut chart = styled(&plot, title).build_cartesian_2d((x_range.0..x_range.1).log_scale().with_key_points(log_ticks(x_range.0, x_range.1, &kv)), y_range).map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("KV-cache bytes/token (log)")
        .y_desc(y_desc)
        .axis_desc_style(("sans-serif", AXIS_PX))
        .label_style(("sans-serif", TICK_PX))
        .x_label_formatter(&|x| tick_label(*x))
        .draw()
        .map_err(err)?;
    // Colour: the line field (the attention); marker shape: the panel a loss plot would use.
    let layout = layout(groups);
    let lines = distinct(drawn.iter().map(|g| layout.line_name(g)));
    let facets = distinct(drawn.iter().map(|g| layout.facet_name(g)));
    for g in &drawn {
        let c = color(lines.iter().position(|l| *l == layout.line_name(g)).unwrap_or(0));
        let shape = facets.iter().position(|f| *f == layout.facet_name(g)).unwrap_or(0);
        let (x, (m, s)) = (g.kv_bytes, quality(g));
        if s.is_finite() {
            chart.draw_series(std::iter::once(PathElement::new(vec![(x, m - s), (x, m + s)], c.stroke_width(2)))).map_err(err)?;
        }
        let at = chart.backend_coord(&(x, m));
        marker(&plot, shape, at, c)?;
    }
    let mut entries: Vec<Entry> = lines.iter().enumerate().map(|(i, l)| Entry { color: color(i), text: l.clone(), marker: Some(0) }).collect();
    if facets.len() > 1 {
        entries.extend(facets.iter().enumerate().map(|(i, f)| Entry { color: BLACK, text: f.clone(), marker: Some(i) }));
    }
    draw_legend(&legend, &entries, &["bars: ± std over seeds", if accuracy { "higher is better" } else { "lower is better" }])?;
    root.present().map_err(err)?;
    Ok(())
}

/// Numeric config fields (other than the attention) that vary across groups of one task with
/// accuracy: each gets an accuracy plot (none when the task kind varies).
pub fn accuracy_axes(groups: &[Group]) -> Vec<String> {
    if !crate::tables::has_accuracy(groups) {
        return Vec::new();
    }
    let Some(first) = groups.first() else { return Vec::new() };
    // Runs of several tasks (a MAD sweep): accuracy against one task's field across tasks
    // would mix unlike numbers.
    if first.fields.keys().any(|k| k == "data.task" || k == "data.task.kind") {
        return Vec::new();
    }
    first
        .fields
        .keys()
        .filter(|k| k.as_str() != "model.attention" && groups.iter().all(|g| g.fields[*k].parse::<f64>().is_ok()))
        .cloned()
        .collect()
}

/// File name of the accuracy plot against `field`.
pub fn accuracy_file(field: &str) -> String {
    format!("accuracy_vs_{}.svg", field.rsplit('.').next().unwrap_or(field))
}

/// Mean test accuracy against the numeric field `field`, one line per combination of the other
/// varying fields (typically one per attention kind).
pub fn accuracy_svg(groups: &[Group], field: &str, path: &Path) -> Result<()> {
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for g in groups.iter().filter(|g| !g.accuracy.is_empty()) {
        let x: f64 = g.fields[field].parse().unwrap_or(f64::NAN);
        let name: Vec<String> = g
            .fields
            .iter()
            .filter(|(k, _)| k.as_str() != field)
            .filter_map(|(k, v)| if k == "model.attention" { Some(attention_name(g)) } else { field_text(k, v) })
            .collect();
        let name = name.join(" ");
        match series.iter_mut().find(|(n, _)| *n == name) {
            Some((_, pts)) => pts.push((x, 100.0 * g.accuracy_mean())),
            None => series.push((name, vec![(x, 100.0 * g.accuracy_mean())])),
        }
    }
    let short = field.rsplit('.').next().unwrap_or(field);
    let axes = Axes { title: format!("Test accuracy vs {short} (mean over seeds)"), x: format!("{field} (log scale)"), y: "test accuracy (%)".into(), log_y: false };
    lines_svg(&axes, series, path)
}

/// Titles and scales of a [`lines_svg`] plot (x is always log scale).
pub struct Axes {
    pub title: String,
    pub x: String,
    pub y: String,
    pub log_y: bool,
}

/// Named series of (x, y) points as lines with markers; x log scale, y linear or log.
pub fn lines_svg(axes: &Axes, mut series: Vec<(String, Vec<(f64, f64)>)>, path: &Path) -> Result<()> {
    let pts = || series.iter().flat_map(|(_, p)| p.iter().copied());
    let (x_lo, x_hi) = pts().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (x, _)| (lo.min(x), hi.max(x)));
    let (y_lo, y_hi) = pts().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (_, y)| (lo.min(y), hi.max(y)));
    if !(x_lo > 0.0 && x_hi > x_lo && y_lo.is_finite() && (!axes.log_y || y_lo > 0.0)) {
        return Ok(());
    }
    let root = SVGBackend::new(path, (PANEL_W + LEGEND_W, PANEL_H + 40)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (plot, legend) = root.split_horizontally(PANEL_W);
    let entries: Vec<Entry> = series.iter().enumerate().map(|(i, (name, _))| Entry { color: color(i), text: name.clone(), marker: None }).collect();
    draw_legend(&legend, &entries, &[])?;
    let mut builder = styled(&plot, &axes.title);
    let xs: Vec<f64> = pts().map(|(x, _)| x).collect();
    let x_range = (x_lo / 1.2..x_hi * 1.2).log_scale().with_key_points(log_ticks(x_lo / 1.2, x_hi * 1.2, &xs));
    for s in &mut series {
        s.1.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(axes.x.as_str())
                .y_desc(axes.y.as_str())
                .axis_desc_style(("sans-serif", AXIS_PX))
                .label_style(("sans-serif", TICK_PX))
                .x_label_formatter(&|x| tick_label(*x))
                .draw()
                .map_err(err)?;
            for (i, (_, pts)) in series.into_iter().enumerate() {
                let c = color(i);
                chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled()))).map_err(err)?;
                chart.draw_series(LineSeries::new(pts, c.stroke_width(2))).map_err(err)?;
            }
        }};
    }
    if axes.log_y {
        draw!(builder.build_cartesian_2d(x_range, (y_lo / 1.5..y_hi * 1.5).log_scale()).map_err(err)?);
    } else {
        draw!(builder.build_cartesian_2d(x_range, 0f64..(y_hi * 1.05).max(1.0)).map_err(err)?);
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Loss against position ([`crate::tables::position_rows`]): one line per config (and window,
/// when several were evaluated), the mean over seeds of each bucket at the bucket's middle
/// position. Nothing is written when no run has a dense evaluation.
pub fn position_svg(rows: &[crate::tables::PositionRow], path: &Path) -> Result<()> {
    let windows: std::collections::BTreeSet<(&str, usize)> = rows.iter().map(|r| (r.split.as_str(), r.block)).collect();
    let series: Vec<(String, Vec<(f64, f64)>)> = rows
        .iter()
        .map(|r| {
            let name = if windows.len() > 1 { format!("{} ({} @ {})", r.label, r.split, r.block) } else { r.label.clone() };
            let pts = crate::tables::position_buckets(r.block)
                .into_iter()
                .enumerate()
                .filter_map(|(b, (lo, hi))| {
                    let xs: Vec<f64> = r.per_run.iter().filter_map(|v| v.get(b).copied()).filter(|v| v.is_finite()).collect();
                    let y = crate::stats::mean(&xs);
                    // A log axis: a bucket with zero loss (a saturated task) is left out.
                    (!xs.is_empty() && y > 0.0).then(|| ((lo + hi) as f64 / 2.0, y))
                })
                .collect();
            (name, pts)
        })
        .collect();
    if series.iter().all(|(_, p)| p.is_empty()) {
        return Ok(());
    }
    let axes = Axes { title: "Loss by position (dense attnlab eval)".into(), x: "position in the window (log)".into(), y: "mean cross-entropy (log)".into(), log_y: true };
    lines_svg(&axes, series, path)
}

/// The attention part of a group's label (before any ` field=value`).
fn attention_name(g: &Group) -> String {
    g.label.split(' ').next().unwrap_or(&g.label).to_string()
}
