//! The quality-vs-cost plot as an SVG string (plotters' SVG backend, drawn in memory).
//!
//! x: mean cost per prompt in USD on a log scale (costs span orders of magnitude);
//! y: mean test quality. Each router is a line through its lambda sweep (sorted by
//! cost), single models are labelled dots, the oracle is a star-like cross. Costs that
//! are not positive are drawn at the axis' left edge.

use plotters::prelude::*;

use crate::{EvalError, Point};

/// What to draw.
#[derive(Debug, Clone)]
pub struct PlotInput {
    pub title: String,
    /// Router name and its `(cost, quality)` points.
    pub curves: Vec<(String, Vec<(f64, f64)>)>,
    /// Single models: name and point.
    pub singles: Vec<(String, Point)>,
    pub oracle: Option<Point>,
}

fn err(e: impl std::fmt::Display) -> EvalError {
    EvalError::Plot(e.to_string())
}

/// Renders `input` as a standalone SVG document.
pub fn render_svg(input: &PlotInput) -> Result<String, EvalError> {
    let mut costs: Vec<f64> = input
        .curves
        .iter()
        .flat_map(|(_, p)| p.iter().map(|p| p.0))
        .chain(input.singles.iter().map(|s| s.1.cost))
        .chain(input.oracle.map(|o| o.cost))
        .filter(|c| c.is_finite() && *c > 0.0)
        .collect();
    costs.sort_by(f64::total_cmp);
    let (x_lo, x_hi) = match (costs.first(), costs.last()) {
        (Some(&lo), Some(&hi)) if hi > lo => (lo / 1.5, hi * 1.5),
        (Some(&lo), _) => (lo / 10.0, lo * 10.0),
        _ => (1e-6, 1.0),
    };
    let qualities = input
        .curves
        .iter()
        .flat_map(|(_, p)| p.iter().map(|p| p.1))
        .chain(input.singles.iter().map(|s| s.1.quality))
        .chain(input.oracle.map(|o| o.quality))
        .filter(|q| q.is_finite());
    let (q_lo, q_hi) = qualities.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), q| {
        (lo.min(q), hi.max(q))
    });
    let (y_lo, y_hi) = if q_lo <= q_hi {
        ((q_lo - 0.05).max(0.0), (q_hi + 0.05).min(1.05))
    } else {
        (0.0, 1.0)
    };
    let clamp = |c: f64| if c.is_finite() && c > 0.0 { c } else { x_lo };

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1100, 750)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&input.title, ("sans-serif", 22))
            .margin(20)
            .x_label_area_size(50)
            .y_label_area_size(60)
            .build_cartesian_2d((x_lo..x_hi).log_scale(), y_lo..y_hi)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("mean cost per prompt (USD, log scale)")
            .y_desc("mean test quality")
            .x_label_formatter(&|x| format!("{x:.1e}"))
            .y_label_formatter(&|y| format!("{y:.2}"))
            .draw()
            .map_err(err)?;

        for (i, (name, pts)) in input.curves.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let mut line: Vec<(f64, f64)> = pts.iter().map(|&(c, q)| (clamp(c), q)).collect();
            line.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
            chart
                .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))
                .map_err(err)?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(line.iter().map(|&p| Circle::new(p, 2, color.filled())))
                .map_err(err)?;
        }

        for (name, p) in &input.singles {
            let at = (clamp(p.cost), p.quality);
            chart
                .draw_series(std::iter::once(
                    EmptyElement::at(at)
                        + Circle::new((0, 0), 4, BLACK.filled())
                        + Text::new(name.clone(), (6, -6), ("sans-serif", 11).into_font()),
                ))
                .map_err(err)?;
        }

        if let Some(o) = input.oracle {
            let at = (clamp(o.cost), o.quality);
            chart
                .draw_series(std::iter::once(
                    EmptyElement::at(at)
                        + Cross::new((0, 0), 7, RED.stroke_width(3))
                        + Text::new("oracle", (8, -8), ("sans-serif", 13).into_font()),
                ))
                .map_err(err)?;
        }

        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.85))
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_names_every_router_model_and_the_oracle() {
        let input = PlotInput {
            title: "toy".into(),
            curves: vec![
                ("knn".into(), vec![(0.001, 0.5), (0.01, 0.8)]),
                ("mlp".into(), vec![(0.002, 0.6), (0.02, 0.7)]),
            ],
            singles: vec![
                (
                    "gpt-4".into(),
                    Point {
                        quality: 0.85,
                        cost: 0.02,
                    },
                ),
                (
                    "free-model".into(),
                    Point {
                        quality: 0.3,
                        cost: 0.0,
                    },
                ),
            ],
            oracle: Some(Point {
                quality: 0.95,
                cost: 0.003,
            }),
        };
        let svg = render_svg(&input).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        for name in ["knn", "mlp", "gpt-4", "free-model", "oracle", "log scale"] {
            assert!(svg.contains(name), "missing {name}");
        }
        assert!(svg.contains("<polyline") || svg.contains("<path"));
    }
}
