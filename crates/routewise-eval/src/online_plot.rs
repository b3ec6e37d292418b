//! SVG of the online replay: cumulative regret against the oracle over the stream, for
//! the bandit and for the offline router it was warm-started from, without and with
//! drift (the change step is marked); and the same kind of line plot for other
//! step-indexed curves ([`render_xy_svg`]: `eval --onboarding`'s AIQ against probes).
//! Renders to a string; the caller writes the file.

use plotters::prelude::*;

/// One named curve of `(step, cumulative regret)`.
pub type Curve = (String, Vec<(usize, f64)>);

/// Renders the curves; `change_step` draws a vertical marker.
pub fn render_regret_svg(
    title: &str,
    curves: &[Curve],
    change_step: Option<usize>,
) -> Result<String, String> {
    render(
        title,
        "step (prompts served)",
        "cumulative regret vs oracle (reward)",
        curves,
        change_step,
        true,
    )
}

/// Renders `curves` as lines over an integer x axis, with the given axis labels; the y
/// range fits the data.
pub fn render_xy_svg(
    title: &str,
    x_desc: &str,
    y_desc: &str,
    curves: &[Curve],
) -> Result<String, String> {
    render(title, x_desc, y_desc, curves, None, false)
}

fn render(
    title: &str,
    x_desc: &str,
    y_desc: &str,
    curves: &[Curve],
    change_step: Option<usize>,
    from_zero: bool,
) -> Result<String, String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let x_hi = curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.0))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let ys = curves.iter().flat_map(|(_, c)| c.iter().map(|p| p.1));
    let start = if from_zero {
        (0.0f64, 0.0f64)
    } else {
        (f64::INFINITY, f64::NEG_INFINITY)
    };
    let (y_lo, y_hi) = ys.fold(start, |(lo, hi), y| (lo.min(y), hi.max(y)));
    let (y_lo, y_hi) = if y_lo <= y_hi {
        (y_lo, y_hi)
    } else {
        (0.0, 1.0)
    };
    let pad = ((y_hi - y_lo) * 0.05).max(1e-6);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1000, 650)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(20)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..x_hi, (y_lo - pad)..(y_hi + pad))
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .draw()
            .map_err(|e| err(&e))?;
        for (i, (name, pts)) in curves.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let line: Vec<(f64, f64)> = pts.iter().map(|&(s, r)| (s as f64, r)).collect();
            chart
                .draw_series(LineSeries::new(line, color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        if let Some(c) = change_step {
            let c = c as f64;
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(c, y_lo - pad), (c, y_hi + pad)],
                    BLACK.mix(0.5).stroke_width(1),
                )))
                .map_err(|e| err(&e))?
                .label("drift starts")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.5)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.85))
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_names_every_curve() {
        let svg = render_regret_svg(
            "toy",
            &[
                ("bandit".into(), vec![(0, 0.0), (10, 1.0)]),
                ("offline".into(), vec![(0, 0.0), (10, 3.0)]),
            ],
            Some(5),
        )
        .unwrap();
        assert!(svg.starts_with("<svg"));
        for name in ["bandit", "offline", "drift starts", "toy"] {
            assert!(svg.contains(name), "{name}");
        }
    }

    #[test]
    fn xy_svg_names_its_axes_and_curves() {
        let svg = render_xy_svg(
            "onboarding",
            "probes",
            "mean AIQ",
            &[("selected".into(), vec![(0, 0.70), (100, 0.72)])],
        )
        .unwrap();
        for name in ["onboarding", "probes", "mean AIQ", "selected"] {
            assert!(svg.contains(name), "{name}");
        }
    }
}
