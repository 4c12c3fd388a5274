//! `Einsum`: the equation is parsed (`"bij,bjk->bik"`, with `...` for broadcast dimensions and
//! the implicit output form without `->`), labels are bound to operand dimensions, and the
//! result shape is read off the output term. The grammar is `semantics::einsum`, which the
//! engine's kernel evaluates with.

use super::cx::{Infer, NodeCx};
use super::dims::{broadcast, tensor, unify_dim};
use super::ShapeError;
use crate::op::attrs;
use crate::semantics::einsum::{parse, Term};
use crate::types::{DType, Dim};
use std::collections::BTreeMap;

pub(crate) fn einsum(cx: &NodeCx, at: &attrs::Einsum) -> Infer {
    let Some(eq) = &at.equation else {
        return Err(ShapeError::Attribute(
            "Einsum has no 'equation' attribute".into(),
        ));
    };
    let (inputs, output) =
        parse(eq).map_err(|e| ShapeError::Attribute(format!("bad equation '{eq}': {e}")))?;
    if inputs.len() != cx.n_in() {
        return Err(ShapeError::Arity(format!(
            "equation '{eq}' has {} operand terms but the node has {} operands",
            inputs.len(),
            cx.n_in()
        )));
    }
    let dtype = (0..cx.n_in())
        .map(|s| cx.dtype(s))
        .find(|d| *d != DType::Undefined)
        .unwrap_or(DType::Undefined);
    let mut bound: BTreeMap<char, Dim> = BTreeMap::new();
    let mut counts: BTreeMap<char, usize> = BTreeMap::new();
    let mut ell: Option<Vec<Dim>> = Some(Vec::new());
    let mut ranked = true;
    for (i, term) in inputs.iter().enumerate() {
        for &c in &term.labels {
            *counts.entry(c).or_default() += 1;
        }
        let Some(shape) = cx.shape(i) else {
            // Without the rank the ellipsis cannot be placed; labels stay unbound.
            ranked &= term.ellipsis.is_none();
            for &c in &term.labels {
                bound.entry(c).or_insert(Dim::Unknown);
            }
            continue;
        };
        let n = term.labels.len();
        let ell_rank = match (term.ellipsis, shape.len().checked_sub(n)) {
            (_, None) | (None, Some(1..)) => {
                return Err(ShapeError::Rank(format!(
                    "term {i} has {n} labels but operand {i} has rank {}",
                    shape.len()
                )));
            }
            (_, Some(r)) => r,
        };
        let split = term.ellipsis.unwrap_or(n);
        let (head, tail) = term.labels.split_at(split);
        let label_dims = shape[..split].iter().chain(&shape[split + ell_rank..]);
        for (&c, d) in head.iter().chain(tail).zip(label_dims) {
            let merged = match bound.get(&c) {
                // Einsum allows a size-1 dimension to broadcast against its label's size.
                Some(prev) if *prev == Dim::Fixed(1) => d.clone(),
                Some(prev) if *d == Dim::Fixed(1) => prev.clone(),
                Some(prev) => unify_dim(prev, d).map_err(|e| {
                    ShapeError::Mismatch(format!("label '{c}' has two sizes ({e})"))
                })?,
                None => d.clone(),
            };
            bound.insert(c, merged);
        }
        if term.ellipsis.is_some() {
            let dims = &shape[split..split + ell_rank];
            ell = match ell {
                Some(acc) => Some(broadcast(&acc, dims)?),
                None => None,
            };
        }
    }
    if !ranked {
        return Ok(vec![tensor(dtype, None)]);
    }
    let ell = ell.unwrap_or_default();
    let out_term = match output {
        Some(t) => t,
        None => {
            // Implicit output: the broadcast dimensions, then labels used once, alphabetically.
            let labels: Vec<char> = counts
                .iter()
                .filter(|(_, &n)| n == 1)
                .map(|(&c, _)| c)
                .collect();
            Term {
                labels,
                ellipsis: Some(0),
            }
        }
    };
    let mut shape = Vec::new();
    for (i, c) in out_term.labels.iter().enumerate() {
        if out_term.ellipsis == Some(i) {
            shape.extend(ell.iter().cloned());
        }
        match bound.get(c) {
            Some(d) => shape.push(d.clone()),
            None => {
                return Err(ShapeError::Attribute(format!(
                    "output label '{c}' does not occur in any operand"
                )))
            }
        }
    }
    if out_term.ellipsis == Some(out_term.labels.len()) {
        shape.extend(ell.iter().cloned());
    }
    Ok(vec![tensor(dtype, Some(shape))])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_terms() {
        let (ins, out) = parse("b...ij, bjk -> b...ik").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ins.len(), 2);
        assert_eq!(
            ins[0],
            Term {
                labels: vec!['b', 'i', 'j'],
                ellipsis: Some(1)
            }
        );
        assert_eq!(out.map(|t| t.labels), Some(vec!['b', 'i', 'k']));
        assert!(parse("i..j").is_err());
    }
}
