//! SVG plots with plotters: validation-loss curves (seed band) and the loss vs KV-cache Pareto
//! plot (log x axis).

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::tables::Group;

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

/// The chart frame every plot shares: title, margins, axis label areas.
fn styled<'a, DB: DrawingBackend>(root: &'a DrawingArea<DB, plotters::coord::Shift>, title: &str) -> ChartBuilder<'a, 'static, DB> {
    let mut builder = ChartBuilder::on(root);
    builder.caption(title, ("sans-serif", 20)).margin(15).x_label_area_size(45).y_label_area_size(65);
    builder
}

fn padded(lo: f64, hi: f64) -> std::ops::Range<f64> {
    let pad = ((hi - lo) * 0.08).max(1e-3);
    (lo - pad)..(hi + pad)
}

/// Validation loss against step: mean over seeds (line) and min–max over seeds (band).
pub fn loss_svg(groups: &[Group], path: &Path) -> Result<()> {
    let points = groups.iter().flat_map(|g| g.curve.iter());
    let (mut x_max, mut y_lo, mut y_hi) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(s, _, lo, hi) in points {
        x_max = x_max.max(s as f64);
        y_lo = y_lo.min(lo);
        y_hi = y_hi.max(hi);
    }
    if !y_lo.is_finite() {
        return Ok(());
    }
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = styled(&root, "Validation loss (mean over seeds; band = min–max)")
        .build_cartesian_2d(0f64..x_max, padded(y_lo, y_hi))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("training step")
        .y_desc("validation loss (nats/token)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(err)?;
    for (i, g) in groups.iter().enumerate() {
        let c = color(i);
        if g.runs.len() > 1 {
            let mut band: Vec<(f64, f64)> = g.curve.iter().map(|&(s, _, lo, _)| (s as f64, lo)).collect();
            band.extend(g.curve.iter().rev().map(|&(s, _, _, hi)| (s as f64, hi)));
            chart.draw_series(std::iter::once(Polygon::new(band, c.mix(0.15)))).map_err(err)?;
        }
        chart
            .draw_series(LineSeries::new(g.curve.iter().map(|&(s, m, _, _)| (s as f64, m)), c.stroke_width(2)))
            .map_err(err)?
            .label(format!("{} (n={})", g.label, g.runs.len()))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart.configure_series_labels().position(SeriesLabelPosition::UpperRight).background_style(WHITE.mix(0.85)).border_style(BLACK).draw().map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Best validation loss (mean ± std over seeds) against KV-cache bytes per token, log x.
pub fn pareto_svg(groups: &[Group], path: &Path) -> Result<()> {
    let (mut x_lo, mut x_hi, mut y_lo, mut y_hi) = (f64::INFINITY, 0.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for g in groups {
        x_lo = x_lo.min(g.kv_bytes);
        x_hi = x_hi.max(g.kv_bytes);
        y_lo = y_lo.min(g.best_mean() - g.best_std());
        y_hi = y_hi.max(g.best_mean() + g.best_std());
    }
    if !(x_lo > 0.0 && y_lo.is_finite()) {
        return Ok(());
    }
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = styled(&root, "Best validation loss vs KV cache (mean ± std over seeds)")
        .build_cartesian_2d((x_lo / 1.5..x_hi * 1.5).log_scale(), padded(y_lo, y_hi))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("KV-cache bytes per token, all layers (f32, log scale)")
        .y_desc("best validation loss (nats/token)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(err)?;
    for (i, g) in groups.iter().enumerate() {
        let c = color(i);
        let (x, m, s) = (g.kv_bytes, g.best_mean(), g.best_std());
        chart.draw_series(std::iter::once(PathElement::new(vec![(x, m - s), (x, m + s)], c.stroke_width(2)))).map_err(err)?;
        chart
            .draw_series(std::iter::once(Circle::new((x, m), 5, c.filled())))
            .map_err(err)?
            .label(format!("{} (n={})", g.label, g.runs.len()))
            .legend(move |(x, y)| Circle::new((x + 10, y), 5, c.filled()));
        chart.draw_series(std::iter::once(Text::new(g.label.clone(), (x * 1.06, m), ("sans-serif", 14)))).map_err(err)?;
    }
    chart.configure_series_labels().position(SeriesLabelPosition::UpperRight).background_style(WHITE.mix(0.85)).border_style(BLACK).draw().map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Numeric config fields (other than the attention) that vary across groups of a task with
/// accuracy: each gets an accuracy plot.
pub fn accuracy_axes(groups: &[Group]) -> Vec<String> {
    if !crate::tables::has_accuracy(groups) {
        return Vec::new();
    }
    let Some(first) = groups.first() else { return Vec::new() };
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
            .map(|(k, v)| if k == "model.attention" { attention_name(g) } else { format!("{}={v}", k.rsplit('.').next().unwrap_or(k)) })
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
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut builder = styled(&root, &axes.title);
    let x_range = (x_lo / 1.2..x_hi * 1.2).log_scale();
    for s in &mut series {
        s.1.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart.configure_mesh().x_desc(axes.x.as_str()).y_desc(axes.y.as_str()).x_label_formatter(&|x| format!("{x:.0}")).draw().map_err(err)?;
            for (i, (name, pts)) in series.into_iter().enumerate() {
                let c = color(i);
                chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled()))).map_err(err)?;
                chart
                    .draw_series(LineSeries::new(pts, c.stroke_width(2)))
                    .map_err(err)?
                    .label(name)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
            }
            chart.configure_series_labels().position(SeriesLabelPosition::UpperLeft).background_style(WHITE.mix(0.85)).border_style(BLACK).draw().map_err(err)?;
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

/// The attention part of a group's label (before any ` field=value`).
fn attention_name(g: &Group) -> String {
    g.label.split(' ').next().unwrap_or(&g.label).to_string()
}
