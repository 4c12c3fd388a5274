//! `ortho.SparseLinear`: a linear layer `y = x·Wᵀ` whose weight `W` (`out × in`) has an exact
//! N:M pattern (at most `n` non-zeros in every group of `m` consecutive input weights of a row)
//! and is stored compactly: the kept values and, per group, the positions they came from.
//!
//! # Layout (the compact form `--emit-sparse` writes, documented in the README)
//!
//! Attributes `n`, `m` (`0 < n < m ≤ 256`). Operands `(x, values, indices)`, row-major:
//!
//! - `x: [..., in]` (a float type), `in = groups · m`; the result is `[..., out]`, `x`'s dtype.
//! - `values: [out, groups · n]`, `x`'s dtype: the `n` kept weights of group `g` of row `o` are
//!   `values[o, g·n .. g·n + n]`, in increasing position order.
//! - `indices: [out, groups · B]`, `u8`, with `B = ceil(n · bits / 8)` bytes per group and
//!   `bits = ceil(log2 m)`: the `B` bytes of group `g` hold, read as one little-endian integer,
//!   the positions (`0 .. m`) of its kept values, `bits` bits each, the `k`-th at bit `k·bits`;
//!   positions are strictly increasing within a group.
//!
//! So `W[o, g·m + pos(o, g, k)] = values[o, g·n + k]` and every other weight is zero. A group
//! with fewer than `n` non-zeros stores some of its zeros as kept values, so every group has
//! exactly `n` entries. For 2:4 that is one byte per group: `in/2` values and `in/4` index
//! bytes per row, `(4·in/2 + in/4) / (4·in) = 0.5625` of the dense f32 bytes.
//!
//! Compressing a dense matrix and expanding it back gives the same matrix bit for bit, except
//! that a `-0.0` outside the stored entries comes back as `+0.0` (the product is unchanged).

use crate::attr::{Attr, AttrValue};
use crate::types::{DType, Dim};
use std::fmt;

/// The op type in domain `ortho`.
pub const OP_TYPE: &str = "SparseLinear";

/// The N:M pattern of an `ortho.SparseLinear` (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NmSparse {
    /// Entries kept per group.
    pub n: usize,
    /// Group width.
    pub m: usize,
}

/// Why attributes, operands or data do not describe an N:M sparse linear.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SparseError {
    #[error("attribute '{0}' is missing or has the wrong kind")]
    Missing(&'static str),
    #[error("unexpected attribute '{0}'")]
    Unexpected(String),
    #[error("pattern {n}:{m} is not N:M with 0 < N < M <= 256")]
    Pattern { n: i64, m: i64 },
    #[error("expects 3 operands (x, values, indices), found {0}")]
    Operands(usize),
    #[error("operand {slot} ({what}) has shape {found}, expected {expected}")]
    OperandShape {
        slot: usize,
        what: &'static str,
        found: String,
        expected: String,
    },
    #[error("the input's last dim is {found}, expected {expected} (the weight's input width)")]
    InputWidth { found: String, expected: usize },
    #[error("the input is a scalar; a linear needs a last axis")]
    ScalarInput,
    #[error("the input is {0}, which is not a float type")]
    NotFloat(DType),
    #[error("the values are {found}, expected {expected} (the input's dtype)")]
    ValuesDType { found: DType, expected: DType },
    #[error("the indices are {0}, expected u8")]
    IndicesDType(DType),
    #[error("a {rows} × {cols} matrix cannot hold {n}:{m} groups (the input width must be a multiple of {m})")]
    Width {
        rows: usize,
        cols: usize,
        n: usize,
        m: usize,
    },
    #[error("row {row}, group at column {start} keeps {kept} non-zeros, more than {n} of {m}")]
    GroupTooDense {
        row: usize,
        start: usize,
        kept: usize,
        n: usize,
        m: usize,
    },
    #[error("row {row}, group {group}: stored positions {positions:?} are not strictly increasing below {m}")]
    BadPositions {
        row: usize,
        group: usize,
        positions: Vec<usize>,
        m: usize,
    },
    #[error("{what} hold {found} elements, expected {expected}")]
    DataLen {
        what: &'static str,
        found: usize,
        expected: usize,
    },
}

impl NmSparse {
    /// The pattern `n:m`, checked.
    pub fn new(n: usize, m: usize) -> Result<NmSparse, SparseError> {
        if n == 0 || n >= m || m > 256 {
            return Err(SparseError::Pattern {
                n: n as i64,
                m: m as i64,
            });
        }
        Ok(NmSparse { n, m })
    }

    /// Bits per stored position: `ceil(log2 m)`.
    pub fn index_bits(&self) -> usize {
        (usize::BITS - (self.m - 1).leading_zeros()) as usize
    }

    /// Index bytes per group: `ceil(n · bits / 8)`.
    pub fn group_bytes(&self) -> usize {
        (self.n * self.index_bits()).div_ceil(8)
    }

    /// Groups per row of a matrix `in` wide, when `m` divides it.
    pub fn groups(&self, cols: usize) -> Option<usize> {
        (cols % self.m == 0).then_some(cols / self.m)
    }

    /// Shapes `(values, indices)` for an `out × in` weight.
    pub fn operand_shapes(&self, rows: usize, cols: usize) -> Option<([usize; 2], [usize; 2])> {
        let g = self.groups(cols)?;
        Some(([rows, g * self.n], [rows, g * self.group_bytes()]))
    }

    /// Reads the `n` positions of one group from its `B` index bytes into `out`.
    pub fn unpack_group(&self, bytes: &[u8], out: &mut [usize]) {
        let bits = self.index_bits();
        let mut word: u64 = 0;
        for (i, &b) in bytes.iter().enumerate().take(8) {
            word |= (b as u64) << (8 * i);
        }
        let mask = (1u64 << bits) - 1;
        for (k, o) in out.iter_mut().enumerate().take(self.n) {
            *o = ((word >> (k * bits)) & mask) as usize;
        }
    }

    /// Writes the positions of one group into its `B` index bytes.
    fn pack_group(&self, pos: &[usize], bytes: &mut [u8]) {
        let bits = self.index_bits();
        let mut word: u64 = 0;
        for (k, &p) in pos.iter().enumerate() {
            word |= (p as u64) << (k * bits);
        }
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (word >> (8 * i)) as u8;
        }
    }

    /// Compresses a dense `rows × cols` matrix (`W[o, i]`, one row per output feature) whose
    /// groups keep at most `n` non-zeros; the first violating group is an error.
    pub fn compress<T: Copy + Default + PartialEq>(
        &self,
        w: &[T],
        rows: usize,
        cols: usize,
    ) -> Result<(Vec<T>, Vec<u8>), SparseError> {
        let (n, m) = (self.n, self.m);
        let groups = self
            .groups(cols)
            .ok_or(SparseError::Width { rows, cols, n, m })?;
        if w.len() != rows * cols {
            return Err(SparseError::DataLen {
                what: "the weight",
                found: w.len(),
                expected: rows * cols,
            });
        }
        let gb = self.group_bytes();
        let mut vals = Vec::with_capacity(rows * groups * n);
        let mut idx = vec![0u8; rows * groups * gb];
        let zero = T::default();
        let mut pos = Vec::with_capacity(n);
        for r in 0..rows {
            for g in 0..groups {
                let grp = &w[r * cols + g * m..r * cols + g * m + m];
                let kept = grp.iter().filter(|&&x| x != zero).count();
                if kept > n {
                    return Err(SparseError::GroupTooDense {
                        row: r,
                        start: g * m,
                        kept,
                        n,
                        m,
                    });
                }
                // The non-zeros, then the first zeros to fill the group to n, in position order.
                let mut fill = n - kept;
                pos.clear();
                for (p, &x) in grp.iter().enumerate() {
                    if x != zero {
                        pos.push(p);
                    } else if fill > 0 {
                        fill -= 1;
                        pos.push(p);
                    }
                }
                vals.extend(pos.iter().map(|&p| grp[p]));
                let at = (r * groups + g) * gb;
                self.pack_group(&pos, &mut idx[at..at + gb]);
            }
        }
        Ok((vals, idx))
    }

    /// Checks that every group's stored positions are strictly increasing and below `m`.
    pub fn check_indices(&self, idx: &[u8], rows: usize, groups: usize) -> Result<(), SparseError> {
        let gb = self.group_bytes();
        if idx.len() != rows * groups * gb {
            return Err(SparseError::DataLen {
                what: "the indices",
                found: idx.len(),
                expected: rows * groups * gb,
            });
        }
        let mut pos = vec![0usize; self.n];
        for r in 0..rows {
            for g in 0..groups {
                let at = (r * groups + g) * gb;
                self.unpack_group(&idx[at..at + gb], &mut pos);
                let ok = pos[self.n - 1] < self.m && pos.windows(2).all(|w| w[0] < w[1]);
                if !ok {
                    return Err(SparseError::BadPositions {
                        row: r,
                        group: g,
                        positions: pos.clone(),
                        m: self.m,
                    });
                }
            }
        }
        Ok(())
    }

    /// Expands the compact form back to the dense `rows × cols` matrix.
    pub fn expand<T: Copy + Default>(
        &self,
        vals: &[T],
        idx: &[u8],
        rows: usize,
        cols: usize,
    ) -> Result<Vec<T>, SparseError> {
        let (n, m) = (self.n, self.m);
        let groups = self
            .groups(cols)
            .ok_or(SparseError::Width { rows, cols, n, m })?;
        if vals.len() != rows * groups * n {
            return Err(SparseError::DataLen {
                what: "the values",
                found: vals.len(),
                expected: rows * groups * n,
            });
        }
        self.check_indices(idx, rows, groups)?;
        let gb = self.group_bytes();
        let mut w = vec![T::default(); rows * cols];
        let mut pos = vec![0usize; n];
        for r in 0..rows {
            for g in 0..groups {
                let at = (r * groups + g) * gb;
                self.unpack_group(&idx[at..at + gb], &mut pos);
                for (k, &p) in pos.iter().enumerate() {
                    w[r * cols + g * m + p] = vals[(r * groups + g) * n + k];
                }
            }
        }
        Ok(w)
    }

    /// Decodes the ONNX attributes `n` and `m`.
    pub fn from_attrs(attrs: &[Attr]) -> Result<NmSparse, SparseError> {
        for a in attrs {
            if !matches!(a.name.as_str(), "n" | "m") {
                return Err(SparseError::Unexpected(a.name.clone()));
            }
        }
        let int = |name: &'static str| match attrs.iter().find(|a| a.name == name).map(|a| &a.value)
        {
            Some(AttrValue::Int(v)) => Ok(*v),
            _ => Err(SparseError::Missing(name)),
        };
        let (n, m) = (int("n")?, int("m")?);
        let bad = || SparseError::Pattern { n, m };
        let (un, um) = (
            usize::try_from(n).map_err(|_| bad())?,
            usize::try_from(m).map_err(|_| bad())?,
        );
        NmSparse::new(un, um).map_err(|_| bad())
    }

    /// The ONNX attributes, in the canonical order `n, m`.
    pub fn to_attrs(&self) -> Vec<Attr> {
        vec![
            Attr::new("n", AttrValue::Int(self.n as i64)),
            Attr::new("m", AttrValue::Int(self.m as i64)),
        ]
    }

    /// The result shape for operand shapes `x`, `values`, `indices` (any may be unknown), and
    /// the checks between them.
    pub fn infer_shape(
        &self,
        x: Option<&[Dim]>,
        values: Option<&[Dim]>,
        indices: Option<&[Dim]>,
    ) -> Result<Option<Vec<Dim>>, SparseError> {
        let show = |s: &[Dim]| {
            let v: Vec<String> = s.iter().map(|d| d.to_string()).collect();
            format!("[{}]", v.join(", "))
        };
        let fixed = |d: &Dim| match d {
            Dim::Fixed(v) => usize::try_from(*v).ok(),
            _ => None,
        };
        let (mut out, mut groups) = (None, None);
        let gb = self.group_bytes();
        for (slot, what, s, per) in [(1, "values", values, self.n), (2, "indices", indices, gb)] {
            let Some(s) = s else { continue };
            let expected = format!("[out, groups × {per}]");
            let err = || SparseError::OperandShape {
                slot,
                what,
                found: show(s),
                expected: expected.clone(),
            };
            if s.len() != 2 {
                return Err(err());
            }
            if let Some(o) = fixed(&s[0]) {
                if out.is_some_and(|x| x != o) {
                    return Err(err());
                }
                out = Some(o);
            }
            if let Some(w) = fixed(&s[1]) {
                if w % per != 0 || groups.is_some_and(|g| g != w / per) {
                    return Err(err());
                }
                groups = Some(w / per);
            }
        }
        let Some(x) = x else { return Ok(None) };
        let Some((last, lead)) = x.split_last() else {
            return Err(SparseError::ScalarInput);
        };
        if let (Some(v), Some(g)) = (fixed(last), groups) {
            if v != g * self.m {
                return Err(SparseError::InputWidth {
                    found: last.to_string(),
                    expected: g * self.m,
                });
            }
        }
        let mut r = lead.to_vec();
        r.push(out.map_or(Dim::Unknown, |o| Dim::Fixed(o as i64)));
        Ok(Some(r))
    }

    /// The dtype checks: `x` a float type, `values` the same, `indices` u8 (unknown passes).
    pub fn check_dtypes(&self, d: [DType; 3]) -> Result<DType, SparseError> {
        let x = d[0];
        if x != DType::Undefined && !x.is_float() {
            return Err(SparseError::NotFloat(x));
        }
        if x != DType::Undefined && d[1] != DType::Undefined && d[1] != x {
            return Err(SparseError::ValuesDType {
                found: d[1],
                expected: x,
            });
        }
        if d[2] != DType::Undefined && d[2] != DType::U8 {
            return Err(SparseError::IndicesDType(d[2]));
        }
        Ok(x)
    }
}

/// The `.oir` syntax is the attribute list itself (`{n = 2, m = 4}`), which the generic
/// attribute parser reads back into this op.
impl fmt::Display for NmSparse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n = {}, m = {}", self.n, self.m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_sizes() {
        let p = NmSparse::new(2, 4).expect("2:4");
        assert_eq!((p.index_bits(), p.group_bytes()), (2, 1));
        let p = NmSparse::new(4, 8).expect("4:8");
        assert_eq!((p.index_bits(), p.group_bytes()), (3, 2));
        let p = NmSparse::new(1, 2).expect("1:2");
        assert_eq!((p.index_bits(), p.group_bytes()), (1, 1));
        assert!(NmSparse::new(4, 4).is_err());
        assert!(NmSparse::new(0, 4).is_err());
        assert_eq!(NmSparse::from_attrs(&p.to_attrs()), Ok(p));
    }

    #[test]
    fn compress_expand_round_trip_and_pattern_errors() {
        let p = NmSparse::new(2, 4).expect("2:4");
        // Row 0: groups [1 0 2 0] [0 0 0 3]; row 1: [0 0 0 0] [-0.0 5 6 0].
        let w = [
            1.0f32, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0, -0.0, 5.0, 6.0, 0.0,
        ];
        let (v, i) = p.compress(&w, 2, 8).expect("2:4");
        assert_eq!(v.len(), 8);
        assert_eq!(i.len(), 4);
        // Group [0 0 0 3] keeps position 0 (a zero, to fill) and 3: 0 | 3 << 2.
        assert_eq!(i[1], 3 << 2);
        assert_eq!(&v[0..4], &[1.0, 2.0, 0.0, 3.0]);
        let back = p.expand(&v, &i, 2, 8).expect("expand");
        let bits = |s: &[f32]| s.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        // Lossless except the sign of an unstored zero.
        let mut want = w;
        want[12] = 0.0;
        assert_eq!(bits(&back), bits(&want));
        let mut dense = w;
        dense[15] = 7.0;
        assert_eq!(
            p.compress(&dense, 2, 8),
            Err(SparseError::GroupTooDense {
                row: 1,
                start: 4,
                kept: 3,
                n: 2,
                m: 4
            })
        );
        assert!(matches!(
            p.compress(&w[..12], 2, 6),
            Err(SparseError::Width { .. })
        ));
        // Positions out of order are refused when expanding.
        let mut bad = i.clone();
        bad[0] = 1 | (1 << 2);
        assert!(matches!(
            p.expand(&v, &bad, 2, 8),
            Err(SparseError::BadPositions {
                row: 0,
                group: 0,
                ..
            })
        ));
    }

    #[test]
    fn shapes_are_inferred_and_checked() {
        let p = NmSparse::new(2, 4).expect("2:4");
        let f = |v: &[i64]| v.iter().map(|&x| Dim::Fixed(x)).collect::<Vec<_>>();
        let out = p
            .infer_shape(Some(&f(&[3, 8])), Some(&f(&[5, 4])), Some(&f(&[5, 2])))
            .expect("ok");
        assert_eq!(out, Some(f(&[3, 5])));
        assert!(matches!(
            p.infer_shape(Some(&f(&[3, 12])), Some(&f(&[5, 4])), Some(&f(&[5, 2]))),
            Err(SparseError::InputWidth { .. })
        ));
        assert!(matches!(
            p.infer_shape(None, Some(&f(&[5, 4])), Some(&f(&[5, 3]))),
            Err(SparseError::OperandShape { slot: 2, .. })
        ));
        assert!(p
            .check_dtypes([DType::F32, DType::F32, DType::I64])
            .is_err());
        assert!(p.check_dtypes([DType::F32, DType::F16, DType::U8]).is_err());
        assert_eq!(
            p.check_dtypes([DType::F32, DType::F32, DType::U8]),
            Ok(DType::F32)
        );
    }
}
