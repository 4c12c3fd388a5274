//! ScatterND: writes (or, with `reduction = add`, adds) slices of `updates` into a copy of
//! `data` at the positions `indices` names. Autodiff uses the add form as the gradient of
//! Gather (an embedding's rows receive the sum of their tokens' gradients).

use crate::cpu::error::{KernelError, KernelResult};
use crate::cpu::kernel::Inputs;
use crate::cpu::tensor::{Elem, HostTensor};

/// How ScatterND combines an update with the value already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScatterReduction {
    None,
    Add,
}

impl ScatterReduction {
    /// The ONNX attribute's word; `mul`, `max` and `min` have no kernel yet.
    pub fn from_word(w: &str) -> Option<ScatterReduction> {
        match w {
            "none" => Some(ScatterReduction::None),
            "add" => Some(ScatterReduction::Add),
            _ => None,
        }
    }
}

fn scatter_typed<T: Elem>(
    data: HostTensor,
    idx: &[i64],
    k: usize,
    upd: &HostTensor,
    red: ScatterReduction,
) -> KernelResult<HostTensor> {
    let shape = data.shape().to_vec();
    let slice: usize = shape[k..].iter().product();
    let (_, buf) = data.into_parts();
    let mut out = T::into_vec(buf).map_err(|_| KernelError::dtype("data dtype"))?;
    let u = upd
        .data::<T>()
        .ok_or_else(|| KernelError::dtype("updates must have data's element type"))?;
    // Row-major strides of the indexed leading axes.
    let mut strides = vec![slice; k];
    for i in (0..k.saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    for (j, tuple) in idx.chunks(k.max(1)).enumerate() {
        let mut off = 0usize;
        for (a, &ix) in tuple.iter().enumerate().take(k) {
            let dim = shape[a] as i64;
            let i = if ix < 0 { ix + dim } else { ix };
            if i < 0 || i >= dim {
                return Err(KernelError::invalid(format!(
                    "ScatterND index {ix} out of range for a dim of {dim}"
                )));
            }
            off += i as usize * strides[a];
        }
        let src = &u[j * slice..(j + 1) * slice];
        let dst = &mut out[off..off + slice];
        match red {
            ScatterReduction::None => dst.copy_from_slice(src),
            ScatterReduction::Add => {
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = T::from_f64(d.to_f64() + s.to_f64());
                }
            }
        }
    }
    HostTensor::make(shape, T::wrap(out))
}

/// `ScatterND(data, indices, updates)`.
pub fn scatter_nd(ins: &mut Inputs<'_>, red: ScatterReduction) -> KernelResult<Vec<HostTensor>> {
    let ind = ins.req(1)?;
    if !ind.dtype().is_int() {
        return Err(KernelError::dtype("ScatterND indices must be integers"));
    }
    let (ishape, idx) = (ind.shape().to_vec(), ind.to_i64_vec());
    let upd = ins.req(2)?.clone();
    let data = match ins.take(0) {
        Some(t) => t,
        None => ins.req(0)?.clone(),
    };
    let k = *ishape
        .last()
        .ok_or_else(|| KernelError::shape("ScatterND indices must have rank ≥ 1"))?;
    let r = data.rank();
    if k == 0 || k > r {
        return Err(KernelError::shape(format!(
            "ScatterND: index tuples of {k} for data of rank {r}"
        )));
    }
    let mut want = ishape[..ishape.len() - 1].to_vec();
    want.extend_from_slice(&data.shape()[k..]);
    if upd.shape() != want.as_slice() {
        return Err(KernelError::shape(format!(
            "ScatterND updates have shape {:?}, expected {want:?}",
            upd.shape()
        )));
    }
    let d = data.dtype();
    if red == ScatterReduction::Add && !d.is_float() {
        return Err(KernelError::unsupported(
            "ScatterND reduction 'add' on integers",
        ));
    }
    Ok(vec![
        crate::with_dtype!(d, T => scatter_typed::<T>(data, &idx, k, &upd, red), _ => Err(KernelError::dtype(format!("ScatterND is not defined for {d}"))))?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::kernel::Inputs;

    fn run(data: HostTensor, idx: HostTensor, upd: HostTensor, red: ScatterReduction) -> Vec<f32> {
        let mut ins = Inputs::borrowed(&[Some(&data), Some(&idx), Some(&upd)]);
        let out = scatter_nd(&mut ins, red).expect("scatter");
        out[0].as_f32().expect("f32").to_vec()
    }

    #[test]
    fn rows_are_written_or_added() {
        let data = || HostTensor::from_vec(vec![3, 2], vec![1.0f32; 6]).expect("data");
        // Row 2, row 0, row 2 again (added twice), and −1 meaning the last row.
        let idx = HostTensor::from_vec(vec![3, 1], vec![2i64, 0, -1]).expect("idx");
        let upd =
            HostTensor::from_vec(vec![3, 2], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).expect("upd");
        assert_eq!(
            run(data(), idx.clone(), upd.clone(), ScatterReduction::Add),
            vec![4.0, 5.0, 1.0, 1.0, 7.0, 9.0]
        );
        // Without a reduction the last write wins.
        assert_eq!(
            run(data(), idx, upd, ScatterReduction::None),
            vec![3.0, 4.0, 1.0, 1.0, 5.0, 6.0]
        );
    }

    #[test]
    fn bad_indices_and_shapes_are_errors() {
        let data = HostTensor::from_vec(vec![2, 2], vec![0.0f32; 4]).expect("data");
        let idx = HostTensor::from_vec(vec![1, 1], vec![5i64]).expect("idx");
        let upd = HostTensor::from_vec(vec![1, 2], vec![1.0f32, 1.0]).expect("upd");
        let mut ins = Inputs::borrowed(&[Some(&data), Some(&idx), Some(&upd)]);
        assert!(scatter_nd(&mut ins, ScatterReduction::Add).is_err());
        let idx = HostTensor::from_vec(vec![1, 1], vec![0i64]).expect("idx");
        let bad = HostTensor::from_vec(vec![1, 3], vec![1.0f32; 3]).expect("upd");
        let mut ins = Inputs::borrowed(&[Some(&data), Some(&idx), Some(&bad)]);
        assert!(scatter_nd(&mut ins, ScatterReduction::Add).is_err());
    }
}
