//! Self-contained HTML reports: charts drawn with `plotters` into SVG and embedded inline, so
//! one file opens in any browser without network access or scripts.

use crate::CliError;
use plotters::prelude::*;

/// One line of a chart.
pub struct Series<'a> {
    pub label: &'a str,
    pub values: &'a [f64],
    pub color: RGBColor,
}

pub const COLOR_A: RGBColor = RGBColor(31, 119, 180);
pub const COLOR_B: RGBColor = RGBColor(214, 39, 40);

fn plot_error(e: impl std::error::Error + Send + Sync + 'static) -> CliError {
    CliError::Plot { source: e.into() }
}

/// A line chart of `series` over their index (x from 0), as an SVG element.
pub fn line_chart_svg(
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series<'_>],
) -> Result<String, CliError> {
    let n = series
        .iter()
        .map(|s| s.values.len())
        .max()
        .unwrap_or(0)
        .max(2);
    let finite = || {
        series
            .iter()
            .flat_map(|s| s.values.iter().copied())
            .filter(|v| v.is_finite())
    };
    let lo = finite().fold(f64::INFINITY, f64::min);
    let hi = finite().fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if lo.is_finite() && hi.is_finite() {
        // A flat series still gets a visible band around it.
        let pad = ((hi - lo) * 0.05).max(1e-9);
        (lo - pad, hi + pad)
    } else {
        (0.0, 1.0)
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 380)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..(n - 1) as f64, lo..hi)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .draw()
            .map_err(plot_error)?;
        for s in series {
            let color = s.color;
            let points = s
                .values
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_finite())
                .map(|(i, v)| (i as f64, *v));
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(plot_error)?
                .label(s.label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

/// Text for HTML element content and attribute values.
fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    html_escape::encode_double_quoted_attribute(s)
}

/// The start of a page: its head, the title and a table of (key, value) rows; the caller adds
/// the rest and closes it with `</body></html>`.
pub fn page_start(title: &str, rows: &[(String, String)]) -> String {
    let mut html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\n\
         <style>body{{font-family:sans-serif;margin:2em;max-width:960px}}\
         td{{padding:2px 12px}}td:first-child{{color:#555}}\
         table.data{{border-collapse:collapse}}table.data td,table.data th{{border:1px solid #ccc;text-align:right}}\
         </style></head><body>\n<h1>{t}</h1>\n<table>\n",
        t = escape(title)
    );
    for (k, v) in rows {
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td></tr>\n",
            escape(k),
            escape(v)
        ));
    }
    html.push_str("</table>\n");
    html
}

/// A whole page: a title, a table of (key, value) rows, then the charts (SVG elements).
pub fn page(title: &str, rows: &[(String, String)], charts: &[String]) -> String {
    let mut html = page_start(title, rows);
    for c in charts {
        html.push_str("<figure>");
        html.push_str(c);
        html.push_str("</figure>\n");
    }
    html.push_str("</body></html>\n");
    html
}

/// A data table with a header row; `id` names it for readers of the page.
pub fn table(id: &str, head: &[String], body: &[Vec<String>]) -> String {
    let mut html = format!("<table class=\"data\" id=\"{}\">\n<tr>", escape(id));
    for h in head {
        html.push_str(&format!("<th>{}</th>", escape(h)));
    }
    html.push_str("</tr>\n");
    for row in body {
        html.push_str("<tr>");
        for c in row {
            html.push_str(&format!("<td>{}</td>", escape(c)));
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</table>\n");
    html
}

/// The page of `compare --html`: mean NLL per position for A and B, and B − A.
pub fn nll_report(
    rows: &[(&str, String)],
    sum_a: &[f64],
    sum_b: &[f64],
    count: &[usize],
) -> Result<String, CliError> {
    let mean = |sum: &[f64]| -> Vec<f64> {
        sum.iter()
            .zip(count)
            .map(|(s, n)| if *n > 0 { s / *n as f64 } else { f64::NAN })
            .collect()
    };
    let (a, b) = (mean(sum_a), mean(sum_b));
    let delta: Vec<f64> = a.iter().zip(&b).map(|(x, y)| y - x).collect();
    let nll = line_chart_svg(
        "Mean NLL per position (predicting token t + 1)",
        "position t in the window",
        "NLL (nats)",
        &[
            Series {
                label: "A",
                values: &a,
                color: COLOR_A,
            },
            Series {
                label: "B",
                values: &b,
                color: COLOR_B,
            },
        ],
    )?;
    let diff = line_chart_svg(
        "NLL of B minus NLL of A per position",
        "position t in the window",
        "ΔNLL (nats)",
        &[Series {
            label: "B − A",
            values: &delta,
            color: COLOR_B,
        }],
    )?;
    let rows: Vec<(String, String)> = rows
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    Ok(page("ortho-opt compare", &rows, &[nll, diff]))
}
