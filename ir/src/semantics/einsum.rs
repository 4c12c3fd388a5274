//! `Einsum`: the equation's grammar (terms of letters with at most one `...`, `->` and an
//! explicit output term, or the implicit output: the broadcast dims, then the labels used once,
//! alphabetically), shared by shape inference and the engine, and a concrete evaluation in f64.
//!
//! The evaluation walks every combination of label values once (output labels outermost, summed
//! labels inside) and multiplies the operands' elements through per-label strides: general
//! (diagonals, broadcasting, any number of operands), exact in f64, and meant for the small
//! contractions exporters leave in graphs; large products are MatMuls in exported models.

use super::broadcast::broadcast_shapes;
use super::size::{checked_numel, strides};
use super::{SemError, SemResult};

/// One term of the equation: its labels, and where the ellipsis sits among them.
#[derive(Debug, PartialEq)]
pub struct Term {
    pub labels: Vec<char>,
    pub ellipsis: Option<usize>,
}

fn parse_term(t: &str) -> SemResult<Term> {
    let mut labels = Vec::new();
    let mut ellipsis = None;
    let mut rest = t;
    while let Some(c) = rest.chars().next() {
        if let Some(r) = rest.strip_prefix("...") {
            if ellipsis.is_some() {
                return Err(SemError::Invalid(format!("term '{t}' has two ellipses")));
            }
            ellipsis = Some(labels.len());
            rest = r;
        } else if c.is_ascii_alphabetic() {
            labels.push(c);
            rest = &rest[1..];
        } else {
            return Err(SemError::Invalid(format!("unexpected '{c}' in term '{t}'")));
        }
    }
    Ok(Term { labels, ellipsis })
}

/// Parses an equation into input terms and the explicit output term, if any.
pub fn parse(eq: &str) -> SemResult<(Vec<Term>, Option<Term>)> {
    let eq: String = eq.chars().filter(|c| !c.is_whitespace()).collect();
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l, Some(r)),
        None => (eq.as_str(), None),
    };
    let inputs = lhs
        .split(',')
        .map(parse_term)
        .collect::<SemResult<Vec<_>>>()?;
    let output = rhs.map(parse_term).transpose()?;
    Ok((inputs, output))
}

/// The implicit output term: the broadcast dims, then the labels used exactly once, sorted.
pub fn implicit_output(inputs: &[Term]) -> Term {
    let mut counts: std::collections::BTreeMap<char, usize> = Default::default();
    for t in inputs {
        for &c in &t.labels {
            *counts.entry(c).or_default() += 1;
        }
    }
    Term {
        labels: counts
            .into_iter()
            .filter(|&(_, n)| n == 1)
            .map(|(c, _)| c)
            .collect(),
        ellipsis: Some(0),
    }
}

/// A label of the expanded equation: a letter, or the i-th broadcast dim counted from the right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Label {
    Letter(char),
    Ell(usize),
}

/// A term's labels per operand dim, the ellipsis expanded to `ell` broadcast labels.
fn expand(t: &Term, ell: usize) -> Vec<Label> {
    let split = t.ellipsis.unwrap_or(t.labels.len());
    let mut v: Vec<Label> = t.labels[..split]
        .iter()
        .map(|&c| Label::Letter(c))
        .collect();
    if t.ellipsis.is_some() {
        v.extend((0..ell).rev().map(Label::Ell));
    }
    v.extend(t.labels[split..].iter().map(|&c| Label::Letter(c)));
    v
}

/// Evaluates `eq` on operands given as (elements, dims): the output dims and elements.
pub fn einsum_f64(eq: &str, ops: &[(&[f64], &[usize])]) -> SemResult<(Vec<usize>, Vec<f64>)> {
    let (inputs, output) = parse(eq)?;
    if inputs.len() != ops.len() {
        return Err(SemError::Invalid(format!(
            "equation '{eq}' has {} operand terms for {} operands",
            inputs.len(),
            ops.len()
        )));
    }
    // Per operand its broadcast dims; all of them broadcast together.
    let mut ell_dims: Vec<&[usize]> = Vec::new();
    let mut exp: Vec<Vec<Label>> = Vec::new();
    for (i, (t, (_, dims))) in inputs.iter().zip(ops).enumerate() {
        let n = t.labels.len();
        let e = match (t.ellipsis, dims.len().checked_sub(n)) {
            (Some(_), Some(e)) | (None, Some(e @ 0)) => e,
            _ => {
                return Err(SemError::Invalid(format!(
                    "term {i} has {n} labels but operand {i} has rank {}",
                    dims.len()
                )))
            }
        };
        let split = t.ellipsis.unwrap_or(n);
        ell_dims.push(&dims[split..split + e]);
        exp.push(expand(t, e));
    }
    let ell = broadcast_shapes(&ell_dims)?;
    let out_term = output.unwrap_or_else(|| implicit_output(&inputs));
    let out_labels = expand(&out_term, ell.len());
    // Every label with its size: a size-1 dim broadcasts against the label's other sizes.
    let mut all: Vec<(Label, usize)> = Vec::new();
    for (labels, (_, dims)) in exp.iter().zip(ops) {
        for (&l, &d) in labels.iter().zip(dims.iter()) {
            let d = match l {
                Label::Ell(k) => ell[ell.len() - 1 - k],
                Label::Letter(_) => d,
            };
            match all.iter_mut().find(|(x, _)| *x == l) {
                Some((_, s)) if *s == d || d == 1 => {}
                Some((_, s)) if *s == 1 => *s = d,
                Some((Label::Letter(c), s)) => {
                    return Err(SemError::Invalid(format!(
                        "label '{c}' has two sizes ({s} and {d})"
                    )))
                }
                Some(_) => {}
                None => all.push((l, d)),
            }
        }
    }
    for l in &out_labels {
        if !all.iter().any(|(x, _)| x == l) {
            return Err(SemError::Invalid(format!(
                "output label {l:?} does not occur in any operand"
            )));
        }
    }
    // Output labels first (in output order), then the summed ones.
    let mut order: Vec<(Label, usize)> = out_labels
        .iter()
        .map(|l| *all.iter().find(|(x, _)| x == l).expect("checked above"))
        .collect();
    order.extend(all.iter().filter(|(l, _)| !out_labels.contains(l)).copied());
    let sizes: Vec<usize> = order.iter().map(|&(_, s)| s).collect();
    let out_dims: Vec<usize> = sizes[..out_labels.len()].to_vec();
    let n_out = checked_numel(&out_dims)?;
    let n_sum = checked_numel(&sizes[out_labels.len()..])?;
    // Per operand, the stride each label of `order` moves it by (0 where it is absent or
    // broadcast; a label repeated in one term adds its strides: the diagonal).
    let steps: Vec<Vec<usize>> = exp
        .iter()
        .zip(ops)
        .map(|(labels, (_, dims))| {
            let st = strides(dims);
            order
                .iter()
                .map(|(l, _)| {
                    labels
                        .iter()
                        .zip(dims.iter())
                        .zip(&st)
                        .filter(|((x, &d), _)| *x == l && d != 1)
                        .map(|(_, &s)| s)
                        .sum()
                })
                .collect()
        })
        .collect();
    let mut out = vec![0.0f64; n_out];
    let mut idx = vec![0usize; order.len()];
    for o in out.iter_mut() {
        let mut acc = 0.0f64;
        for _ in 0..n_sum {
            let mut p = 1.0f64;
            for ((data, _), st) in ops.iter().zip(&steps) {
                let off: usize = idx.iter().zip(st).map(|(i, s)| i * s).sum();
                p *= data[off];
            }
            acc += p;
            // Advance the summed labels (innermost last), then carry into the output labels.
            for a in (0..order.len()).rev() {
                idx[a] += 1;
                if idx[a] < sizes[a] {
                    break;
                }
                idx[a] = 0;
            }
        }
        *o = acc;
        if n_sum == 0 {
            // No combination to sum (an empty summed label): still step the output labels.
            for a in (0..out_labels.len()).rev() {
                idx[a] += 1;
                if idx[a] < sizes[a] {
                    break;
                }
                idx[a] = 0;
            }
        }
    }
    Ok((out_dims, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_transpose_trace_and_implicit_output() {
        let a = [1.0, 2.0, 3.0, 4.0]; // [[1,2],[3,4]]
        let b = [5.0, 6.0, 7.0, 8.0];
        let (d, v) = einsum_f64("ij,jk->ik", &[(&a, &[2, 2]), (&b, &[2, 2])]).expect("mm");
        assert_eq!((d, v), (vec![2, 2], vec![19.0, 22.0, 43.0, 50.0]));
        let (d, v) = einsum_f64("ij->ji", &[(&a, &[2, 2])]).expect("t");
        assert_eq!((d, v), (vec![2, 2], vec![1.0, 3.0, 2.0, 4.0]));
        let (d, v) = einsum_f64("ii", &[(&a, &[2, 2])]).expect("trace");
        assert_eq!((d, v), (vec![], vec![5.0]));
        // Implicit output "ba" -> "ab" sorted: a transpose.
        let (_, v) = einsum_f64("ba", &[(&a, &[2, 2])]).expect("implicit");
        assert_eq!(v, vec![1.0, 3.0, 2.0, 4.0]);
        // Broadcast dims: a batch of 2 against one matrix.
        let x = [1.0, 0.0, 0.0, 1.0, 2.0, 0.0, 0.0, 2.0];
        let (d, v) = einsum_f64("...ij,jk->...ik", &[(&x, &[2, 2, 2]), (&a, &[2, 2])]).expect("b");
        assert_eq!(
            (d, v),
            (vec![2, 2, 2], vec![1.0, 2.0, 3.0, 4.0, 2.0, 4.0, 6.0, 8.0])
        );
        assert!(einsum_f64("ij,jk->ik", &[(&a, &[2, 2]), (&b, &[4, 1])]).is_err());
    }
}
