//! The optimizer's HTML report of its calibration passes (`--report-html FILE.html`): per-layer
//! sparsity of each linear, entropy before and after the rotation search, whether the rotation
//! was kept, and the pruned block's reconstruction errors, as charts and one table row per layer.
//!
//! The numbers are those of the passes' per-layer notes (the lines `--report FILE.json` lists
//! under `notes`, e.g. `denoise-prune: layer 3: q 50.0 % …; entropy 5.12 → 4.87; pruned block
//! output error 0.0412 unrotated, 0.0398 rotated; rotated`): the table shows each number with
//! the digits of its note, so the page and the JSON report always agree.

use crate::report_html::{line_chart_svg, Series, COLOR_A, COLOR_B};
use crate::CliError;

/// One number of a note: its value (for charts) and its text as the note printed it.
#[derive(Debug, Clone, PartialEq)]
pub struct Num {
    pub value: f64,
    pub text: String,
}

impl Num {
    fn parse(s: &str) -> Option<Num> {
        let t = s.trim().trim_end_matches(',');
        t.parse().ok().map(|value| Num {
            value,
            text: t.to_string(),
        })
    }
}

/// What one pass reported about one layer (transformer block).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerRow {
    pub pass: String,
    pub layer: usize,
    /// Per linear role (`q`, `k`, …, `down`): the percentage of zero weights.
    pub sparsity: Vec<(String, Num)>,
    /// Entropy of the block's weights before and after the rotation search.
    pub entropy: Option<(Num, Num)>,
    /// Relative output error of the pruned block without and with the rotation.
    pub error: Option<(Num, Num)>,
    /// Whether the block's rotation was kept (`None`: the pass does not rotate).
    pub rotated: Option<bool>,
    /// `denoise-prune`'s N:M permutation: proxy cost before → after for the stream, o's heads
    /// and the MLP's hidden channels (empty when the note has none).
    pub permutation: Vec<(Num, Num)>,
}

impl LayerRow {
    /// The mean sparsity (%) over the layer's pruned linears (unweighted).
    pub fn mean_sparsity(&self) -> f64 {
        let n = self.sparsity.len().max(1) as f64;
        self.sparsity.iter().map(|(_, s)| s.value).sum::<f64>() / n
    }
}

/// Parses a per-layer note (`PASS: layer I: …`); `None` for any other note.
pub fn parse_layer_note(note: &str) -> Option<LayerRow> {
    let (pass, rest) = note.split_once(": layer ")?;
    let (index, body) = rest.split_once(':')?;
    let mut row = LayerRow {
        pass: pass.to_string(),
        layer: index.trim().parse().ok()?,
        sparsity: Vec::new(),
        entropy: None,
        error: None,
        rotated: None,
        permutation: Vec::new(),
    };
    let mut parts = body.split(';').map(str::trim);
    // The first part lists `role P %` per pruned linear (and `role kept (kind)` for a linear
    // with no matrix to prune, which has no number).
    let words: Vec<&str> = parts.next().unwrap_or("").split_whitespace().collect();
    for w in words.windows(3) {
        if w[2] == "%" {
            if let Some(p) = Num::parse(w[1]) {
                row.sparsity.push((w[0].to_string(), p));
            }
        }
    }
    for p in parts {
        if let Some(e) = p.strip_prefix("entropy ") {
            let (a, b) = e.split_once('→')?;
            row.entropy = Some((Num::parse(a)?, Num::parse(b)?));
        } else if let Some(e) = p.strip_prefix("pruned block output error ") {
            let (a, b) = e.split_once(" unrotated,")?;
            row.error = Some((Num::parse(a)?, Num::parse(b.trim_end_matches("rotated"))?));
        } else if let Some(e) = p.strip_prefix("permutation proxy cost ") {
            // "stream A → B, heads C → D, mlp E → F"
            for part in e.split(',') {
                let (_, pair) = part.trim().split_once(' ')?;
                let (a, b) = pair.split_once('→')?;
                row.permutation.push((Num::parse(a)?, Num::parse(b)?));
            }
        } else if p == "rotated" {
            row.rotated = Some(true);
        } else if p == "not rotated" {
            row.rotated = Some(false);
        }
    }
    Some(row)
}

/// The per-layer rows of a run's notes, in order.
pub fn layer_rows(notes: &[String]) -> Vec<LayerRow> {
    notes.iter().filter_map(|n| parse_layer_note(n)).collect()
}

/// The page: a summary table, charts per pass, and the per-layer table. `summary` holds (key,
/// value) rows such as the input and the pipeline; `notes` are the run's notes.
pub fn calibration_page(
    summary: &[(String, String)],
    notes: &[String],
) -> Result<String, CliError> {
    let rows = layer_rows(notes);
    let mut passes: Vec<&str> = Vec::new();
    for r in &rows {
        if !passes.contains(&r.pass.as_str()) {
            passes.push(&r.pass);
        }
    }
    let mut charts = Vec::new();
    for pass in &passes {
        let of: Vec<&LayerRow> = rows.iter().filter(|r| r.pass == *pass).collect();
        let sparsity: Vec<f64> = of.iter().map(|r| r.mean_sparsity()).collect();
        charts.push(line_chart_svg(
            &format!("{pass}: zero weights per layer (mean over its linears)"),
            "layer",
            "sparsity (%)",
            &[Series {
                label: "sparsity",
                values: &sparsity,
                color: COLOR_A,
            }],
        )?);
        let pairs = |f: fn(&LayerRow) -> Option<&(Num, Num)>| -> Option<(Vec<f64>, Vec<f64>)> {
            let v: Vec<&(Num, Num)> = of.iter().filter_map(|r| f(r)).collect();
            (v.len() == of.len()).then(|| {
                (
                    v.iter().map(|p| p.0.value).collect(),
                    v.iter().map(|p| p.1.value).collect(),
                )
            })
        };
        if let Some((b, a)) = pairs(|r| r.entropy.as_ref()) {
            charts.push(line_chart_svg(
                &format!("{pass}: weight entropy per layer"),
                "layer",
                "entropy",
                &[
                    Series {
                        label: "before",
                        values: &b,
                        color: COLOR_A,
                    },
                    Series {
                        label: "after",
                        values: &a,
                        color: COLOR_B,
                    },
                ],
            )?);
        }
        if let Some((u, r)) = pairs(|r| r.error.as_ref()) {
            charts.push(line_chart_svg(
                &format!("{pass}: pruned block output error per layer (relative)"),
                "layer",
                "‖Y − Y_dense‖ / ‖Y_dense‖",
                &[
                    Series {
                        label: "unrotated",
                        values: &u,
                        color: COLOR_A,
                    },
                    Series {
                        label: "rotated",
                        values: &r,
                        color: COLOR_B,
                    },
                ],
            )?);
        }
    }
    let mut html = crate::report_html::page_start("ortho-opt calibration report", summary);
    if rows.is_empty() {
        html.push_str("<p>No pass of this run reported per-layer results.</p>\n");
    }
    for c in &charts {
        html.push_str("<figure>");
        html.push_str(c);
        html.push_str("</figure>\n");
    }
    html.push_str(&layer_table(&rows));
    html.push_str("</body></html>\n");
    Ok(html)
}

/// The table: one row per (pass, layer), one column per linear role seen, then entropy, errors
/// and the rotation decision where a pass reports them.
fn layer_table(rows: &[LayerRow]) -> String {
    let mut roles: Vec<&str> = Vec::new();
    for r in rows {
        for (role, _) in &r.sparsity {
            if !roles.contains(&role.as_str()) {
                roles.push(role);
            }
        }
    }
    let mut head: Vec<String> = vec!["pass".into(), "layer".into()];
    head.extend(roles.iter().map(|r| format!("{r} zeros (%)")));
    head.extend(
        [
            "entropy before",
            "entropy after",
            "error unrotated",
            "error rotated",
        ]
        .map(String::from),
    );
    let permuted = rows.iter().any(|r| !r.permutation.is_empty());
    if permuted {
        for what in ["stream", "heads", "mlp"] {
            head.push(format!("{what} N:M proxy before"));
            head.push(format!("{what} N:M proxy after"));
        }
    }
    head.push("rotation kept".into());
    let num = |n: Option<&Num>| n.map_or(String::new(), |n| n.text.clone());
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut cells = vec![r.pass.clone(), r.layer.to_string()];
            for role in &roles {
                cells.push(num(r
                    .sparsity
                    .iter()
                    .find(|(x, _)| x == role)
                    .map(|(_, s)| s)));
            }
            cells.push(num(r.entropy.as_ref().map(|e| &e.0)));
            cells.push(num(r.entropy.as_ref().map(|e| &e.1)));
            cells.push(num(r.error.as_ref().map(|e| &e.0)));
            cells.push(num(r.error.as_ref().map(|e| &e.1)));
            if permuted {
                for k in 0..3 {
                    let pair = r.permutation.get(k);
                    cells.push(num(pair.map(|p| &p.0)));
                    cells.push(num(pair.map(|p| &p.1)));
                }
            }
            cells.push(match r.rotated {
                Some(true) => "yes".into(),
                Some(false) => "no".into(),
                None => String::new(),
            });
            cells
        })
        .collect();
    crate::report_html::table("layers", &head, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prune_and_denoise_prune_notes() {
        let r = parse_layer_note("prune: layer 2: q 50.0 % k 50.0 % o kept (lowrank)")
            .expect("a layer note");
        assert_eq!((r.pass.as_str(), r.layer), ("prune", 2));
        assert_eq!(r.sparsity.len(), 2);
        assert_eq!(r.sparsity[1].1.text, "50.0");
        assert_eq!((r.entropy.clone(), r.rotated), (None, None));
        let d = parse_layer_note(
            "denoise-prune: layer 0: q 49.9 % down 50.0 %; entropy 5.12 → 4.87; \
             pruned block output error 0.0412 unrotated, 0.0398 rotated; not rotated",
        )
        .expect("a layer note");
        let (b, a) = d.entropy.clone().expect("entropy");
        assert_eq!((b.value, a.text.as_str()), (5.12, "4.87"));
        let (u, r) = d.error.clone().expect("errors");
        assert_eq!((u.text.as_str(), r.value), ("0.0412", 0.0398));
        assert_eq!(d.rotated, Some(false));
        assert!((d.mean_sparsity() - 49.95).abs() < 1e-9);
        assert!(parse_layer_note("prune: magnitude 2:4: 10 of 20 weights zero").is_none());
    }
}
