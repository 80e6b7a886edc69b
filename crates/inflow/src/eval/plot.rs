//! PNG plots (plotters, bitmap backend). Text is drawn with DejaVu Sans embedded in the binary
//! (assets/fonts, free licence), so plots render the same on machines without system fonts.

use crate::{Error, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;
use std::sync::Once;

static FONT: Once = Once::new();

fn register_font() {
    FONT.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../../../../assets/fonts/DejaVuSans.ttf");
        // A failure here only loses text; the plot still renders.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, bytes);
    });
}

fn err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Msg(format!("{}: plot: {e}", path.display()))
}

/// A scatter plot of (x, y) pairs with axis labels and a title.
pub fn scatter(
    path: &Path,
    xs: &[f64],
    ys: &[f64],
    x_label: &str,
    y_label: &str,
    title: &str,
) -> Result<()> {
    register_font();
    let finite: Vec<(f64, f64)> = xs
        .iter()
        .zip(ys)
        .filter(|(a, b)| a.is_finite() && b.is_finite())
        .map(|(a, b)| (*a, *b))
        .collect();
    let range = |v: &mut dyn Iterator<Item = f64>| {
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for x in v {
            lo = lo.min(x);
            hi = hi.max(x);
        }
        if !lo.is_finite() {
            return (0.0, 1.0);
        }
        let pad = ((hi - lo) * 0.05).max(1e-9);
        (lo - pad, hi + pad)
    };
    let (x0, x1) = range(&mut finite.iter().map(|p| p.0));
    let (y0, y1) = range(&mut finite.iter().map(|p| p.1));
    let root = BitMapBackend::new(path, (800, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| err(path, e))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| err(path, e))?;
    let color = RGBColor(31, 119, 180).mix(0.6);
    chart
        .draw_series(
            finite
                .iter()
                .map(|&(a, b)| Circle::new((a, b), 3, color.filled())),
        )
        .map_err(|e| err(path, e))?;
    root.present().map_err(|e| err(path, e))?;
    Ok(())
}

/// A bar chart: one bar per label.
pub fn bars(
    path: &Path,
    labels: &[String],
    values: &[f64],
    y_label: &str,
    title: &str,
) -> Result<()> {
    register_font();
    let lo = values.iter().copied().fold(0.0f64, f64::min);
    let hi = values.iter().copied().fold(0.0f64, f64::max);
    let pad = ((hi - lo) * 0.1).max(1e-6);
    let root = BitMapBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let n = labels.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(60)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..n as f64, (lo - pad)..(hi + pad))
        .map_err(|e| err(path, e))?;
    let labels_owned = labels.to_vec();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n.max(1))
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 0.26 {
                labels_owned.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc(y_label)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| err(path, e))?;
    chart
        .draw_series(values.iter().enumerate().map(|(i, &v)| {
            Rectangle::new(
                [(i as f64 + 0.15, 0.0), (i as f64 + 0.85, v)],
                RGBColor(31, 119, 180).filled(),
            )
        }))
        .map_err(|e| err(path, e))?;
    // Each bar's label and value at its end (the axis ticks do not fall on bar centres).
    chart
        .draw_series(labels.iter().zip(values).enumerate().map(|(i, (l, &v))| {
            let v_pos = if v >= 0.0 { VPos::Bottom } else { VPos::Top };
            Text::new(
                format!("{l} {v:.3}"),
                (i as f64 + 0.5, v),
                ("sans-serif", 14)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, v_pos)),
            )
        }))
        .map_err(|e| err(path, e))?;
    root.present().map_err(|e| err(path, e))?;
    Ok(())
}
