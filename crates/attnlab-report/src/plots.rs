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
    let mut chart = ChartBuilder::on(&root)
        .caption("Validation loss (mean over seeds; band = min–max)", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(65)
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
    let mut chart = ChartBuilder::on(&root)
        .caption("Best validation loss vs KV cache (mean ± std over seeds)", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(65)
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
