//! `DepthToSpace` and `SpaceToDepth` as a reshape to 6-D, a transpose and a reshape back (the
//! ONNX definitions), and `ReverseSequence`.

use super::size::strides;
use super::{SemError, SemResult};

/// The order of the block and channel factors: `DCR` (depth, column, row: the block first) or
/// `CRD` (channel first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockMode {
    Dcr,
    Crd,
}

impl BlockMode {
    pub fn from_word(w: &str) -> Option<BlockMode> {
        match w {
            "DCR" => Some(BlockMode::Dcr),
            "CRD" => Some(BlockMode::Crd),
            _ => None,
        }
    }
}

/// A movement as reshape → transpose → reshape: the 6-D dims, the permutation, the output dims.
pub type BlockPlan = (Vec<usize>, [usize; 6], Vec<usize>);

fn nchw(dims: &[usize], b: i64, op: &str) -> SemResult<(usize, [usize; 4])> {
    let b = usize::try_from(b)
        .ok()
        .filter(|&b| b > 0)
        .ok_or_else(|| SemError::Invalid(format!("{op} blocksize {b} must be positive")))?;
    match *dims {
        [n, c, h, w] => Ok((b, [n, c, h, w])),
        _ => Err(SemError::Invalid(format!(
            "{op} needs (N, C, H, W), got {dims:?}"
        ))),
    }
}

/// `DepthToSpace` with blocksize `b`: channels become b×b spatial blocks.
pub fn depth_to_space(dims: &[usize], b: i64, mode: BlockMode) -> SemResult<BlockPlan> {
    let (b, [n, c, h, w]) = nchw(dims, b, "DepthToSpace")?;
    if c % (b * b) != 0 {
        return Err(SemError::Invalid(format!(
            "DepthToSpace: {c} channels are not a multiple of {b}²"
        )));
    }
    let cb = c / (b * b);
    let out = vec![n, cb, h * b, w * b];
    Ok(match mode {
        BlockMode::Dcr => (vec![n, b, b, cb, h, w], [0, 3, 4, 1, 5, 2], out),
        BlockMode::Crd => (vec![n, cb, b, b, h, w], [0, 1, 4, 2, 5, 3], out),
    })
}

/// `SpaceToDepth` with blocksize `b`: b×b spatial blocks become channels (the inverse of
/// `DepthToSpace` in the same mode).
pub fn space_to_depth(dims: &[usize], b: i64, mode: BlockMode) -> SemResult<BlockPlan> {
    let (b, [n, c, h, w]) = nchw(dims, b, "SpaceToDepth")?;
    if h % b != 0 || w % b != 0 {
        return Err(SemError::Invalid(format!(
            "SpaceToDepth: {h}×{w} is not a multiple of the block {b}"
        )));
    }
    let split = vec![n, c, h / b, b, w / b, b];
    let out = vec![n, c * b * b, h / b, w / b];
    Ok(match mode {
        BlockMode::Dcr => (split, [0, 3, 5, 1, 2, 4], out),
        BlockMode::Crd => (split, [0, 1, 3, 5, 2, 4], out),
    })
}

/// `ReverseSequence`: along `time`, the first `lens[i]` elements of batch entry i reversed,
/// the rest kept.
pub fn reverse_sequence<T: Copy>(
    data: &[T],
    dims: &[usize],
    lens: &[i64],
    batch: usize,
    time: usize,
) -> SemResult<Vec<T>> {
    if dims.len() < 2 || batch >= dims.len() || time >= dims.len() || batch == time {
        return Err(SemError::Invalid(format!(
            "ReverseSequence: batch axis {batch} and time axis {time} for {dims:?}"
        )));
    }
    if lens.len() != dims[batch] {
        return Err(SemError::Invalid(format!(
            "sequence_lens has {} values for a batch of {}",
            lens.len(),
            dims[batch]
        )));
    }
    let st = strides(dims);
    let t_max = dims[time] as i64;
    let mut out = data.to_vec();
    for (e, o) in out.iter_mut().enumerate() {
        let (bi, ti) = (e / st[batch] % dims[batch], e / st[time] % dims[time]);
        let len = lens[bi];
        if !(0..=t_max).contains(&len) {
            return Err(SemError::Invalid(format!(
                "sequence length {len} outside 0..={t_max}"
            )));
        }
        let len = len as usize;
        if ti < len {
            let src = e - ti * st[time] + (len - 1 - ti) * st[time];
            *o = data[src];
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_plans_and_reverse_sequence() {
        let (split, perm, out) = depth_to_space(&[1, 8, 2, 3], 2, BlockMode::Dcr).expect("d2s");
        assert_eq!(
            (split, perm, out),
            (vec![1, 2, 2, 2, 2, 3], [0, 3, 4, 1, 5, 2], vec![1, 2, 4, 6])
        );
        assert!(space_to_depth(&[1, 1, 3, 4], 2, BlockMode::Dcr).is_err());
        // Two sequences along axis 1: lengths 2 and 3.
        let r = reverse_sequence(&[1, 2, 3, 4, 5, 6], &[2, 3], &[2, 3], 0, 1).expect("rev");
        assert_eq!(r, vec![2, 1, 3, 6, 5, 4]);
    }
}
