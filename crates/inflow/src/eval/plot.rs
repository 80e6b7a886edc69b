//! PNG plots (plotters, bitmap backend). Text is drawn with DejaVu Sans embedded in the binary
//! (assets/fonts, free licence), so plots render the same on machines without system fonts.

use crate::atomic_write::write_atomic_at;
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

/// The frame of an x–y plot: title, axis labels and ranges.
struct Axes<'t> {
    title: &'t str,
    x_label: &'t str,
    y_label: &'t str,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
}

type XyChart<'a, 'b> = ChartContext<
    'a,
    BitMapBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

impl Axes<'_> {
    /// Fills `root` white and draws the caption, the mesh and the axis labels (`path` names
    /// the plot in errors).
    fn draw<'a, 'b>(
        self,
        root: &'a DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>,
        path: &Path,
    ) -> Result<XyChart<'a, 'b>> {
        root.fill(&WHITE).map_err(|e| err(path, e))?;
        let mut chart = ChartBuilder::on(root)
            .caption(self.title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(self.x, self.y)
            .map_err(|e| err(path, e))?;
        chart
            .configure_mesh()
            .x_desc(self.x_label)
            .y_desc(self.y_label)
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| err(path, e))?;
        Ok(chart)
    }
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
    // Drawn to a temporary file and renamed: an earlier plot is never left half-written.
    write_atomic_at(path, |target| {
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
        let root = BitMapBackend::new(target, (800, 640)).into_drawing_area();
        let axes = Axes {
            title,
            x_label,
            y_label,
            x: x0..x1,
            y: y0..y1,
        };
        let mut chart = axes.draw(&root, path)?;
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
    })
    .map(|_| ())
}

/// Lines of y against shared x values, one per named series, with a legend (e.g. a figure per
/// method along training). Non-finite points are left out.
pub fn lines(
    path: &Path,
    xs: &[f64],
    series: &[(String, Vec<f64>)],
    x_label: &str,
    y_label: &str,
    title: &str,
) -> Result<()> {
    write_atomic_at(path, |target| {
        register_font();
        let ys = series.iter().flat_map(|(_, v)| v.iter().copied());
        let (y0, y1) = ys
            .filter(|y| y.is_finite())
            .fold((0.0f64, 1.0f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
        let (x0, x1) = xs
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
                (lo.min(x), hi.max(x))
            });
        let (x0, x1) = if x0 < x1 {
            (x0, x1)
        } else {
            (x0 - 1.0, x0 + 1.0)
        };
        let root = BitMapBackend::new(target, (800, 540)).into_drawing_area();
        let axes = Axes {
            title,
            x_label,
            y_label,
            x: x0..x1,
            y: (y0 - 0.05)..(y1 + 0.05),
        };
        let mut chart = axes.draw(&root, path)?;
        for (i, (name, v)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let points: Vec<(f64, f64)> = xs
                .iter()
                .zip(v)
                .filter(|(_, y)| y.is_finite())
                .map(|(x, y)| (*x, *y))
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(|e| err(path, e))?
                .label(name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(|e| err(path, e))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(|e| err(path, e))?;
        root.present().map_err(|e| err(path, e))?;
        Ok(())
    })
    .map(|_| ())
}

/// A bar chart: one bar per label.
pub fn bars(
    path: &Path,
    labels: &[String],
    values: &[f64],
    y_label: &str,
    title: &str,
) -> Result<()> {
    write_atomic_at(path, |target| {
        register_font();
        let lo = values.iter().copied().fold(0.0f64, f64::min);
        let hi = values.iter().copied().fold(0.0f64, f64::max);
        let pad = ((hi - lo) * 0.1).max(1e-6);
        let root = BitMapBackend::new(target, (800, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(path, e))?;
        let n = labels.len().min(values.len());
        // Segmented x axis: each bar owns one segment and its label sits at the segment's centre.
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(60)
            .y_label_area_size(64)
            .build_cartesian_2d(
                (0..n.saturating_sub(1)).into_segmented(),
                (lo - pad)..(hi + pad),
            )
            .map_err(|e| err(path, e))?;
        let labels_owned = labels.to_vec();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n.max(1))
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) => labels_owned.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .y_desc(y_label)
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| err(path, e))?;
        chart
            .draw_series(values.iter().take(n).enumerate().map(|(i, &v)| {
                let v = if v.is_finite() { v } else { 0.0 };
                let mut r = Rectangle::new(
                    [
                        (SegmentValue::Exact(i), 0.0),
                        (SegmentValue::Exact(i + 1), v),
                    ],
                    RGBColor(31, 119, 180).filled(),
                );
                r.set_margin(0, 0, 12, 12);
                r
            }))
            .map_err(|e| err(path, e))?;
        // The value above (or below) each bar.
        chart
            .draw_series(values.iter().take(n).enumerate().map(|(i, &v)| {
                let y = match v {
                    v if v >= 0.0 => v + pad * 0.25,
                    v if v < 0.0 => v - pad * 0.6,
                    _ => pad * 0.25,
                };
                Text::new(
                    if v.is_finite() {
                        format!("{v:.3}")
                    } else {
                        "n/a".into()
                    },
                    (SegmentValue::CenterOf(i), y),
                    ("sans-serif", 13)
                        .into_font()
                        .color(&BLACK)
                        .pos(Pos::new(HPos::Center, VPos::Bottom)),
                )
            }))
            .map_err(|e| err(path, e))?;
        root.present().map_err(|e| err(path, e))?;
        Ok(())
    })
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    #[test]
    fn bars_draw_labelled_png_with_negative_and_missing_values() {
        let p = std::env::temp_dir().join(format!("inflow-bars-{}.png", std::process::id()));
        let labels: Vec<String> = ["dot", "cosine", "ekfac", "repsim"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        super::bars(&p, &labels, &[0.9, 0.72, -0.1, f64::NAN], "cover", "test").unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        if std::env::var_os("INFLOW_KEEP_PLOT").is_none() {
            let _ = std::fs::remove_file(&p);
        }
    }
}
