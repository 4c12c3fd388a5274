//! ScatterND and ScatterElements: write (or combine, with `reduction = add | mul | max | min`)
//! `updates` into a copy of `data` at the positions `indices` names. Autodiff uses ScatterND's
//! add form as the gradient of Gather (an embedding's rows receive the sum of their tokens'
//! gradients). The offsets come from `ortho_ir::semantics::indexing`.

use crate::cpu::error::{KernelError, KernelResult};
use crate::cpu::kernel::Inputs;
use crate::cpu::tensor::{Elem, HostTensor};
use ortho_ir::semantics::indexing as ix;
pub use ortho_ir::semantics::indexing::ScatterReduction;

/// `d` combined with the update `s`: in f64 for floats (rounded once), wrapping i64 arithmetic
/// for integers.
fn combine<T: Elem>(red: ScatterReduction, d: T, s: T) -> T {
    if T::DTYPE.is_float() {
        let (a, b) = (d.to_f64(), s.to_f64());
        T::from_f64(match red {
            ScatterReduction::None => b,
            ScatterReduction::Add => a + b,
            ScatterReduction::Mul => a * b,
            ScatterReduction::Max => a.max(b),
            ScatterReduction::Min => a.min(b),
        })
    } else {
        let (a, b) = (d.to_i64(), s.to_i64());
        T::from_i64(match red {
            ScatterReduction::None => b,
            ScatterReduction::Add => a.wrapping_add(b),
            ScatterReduction::Mul => a.wrapping_mul(b),
            ScatterReduction::Max => a.max(b),
            ScatterReduction::Min => a.min(b),
        })
    }
}

/// Writes runs of `run` update elements to the data offsets `offs` (one per run, in order).
fn scatter_typed<T: Elem>(
    data: HostTensor,
    offs: &[usize],
    run: usize,
    upd: &HostTensor,
    red: ScatterReduction,
) -> KernelResult<HostTensor> {
    let shape = data.shape().to_vec();
    let (_, buf) = data.into_parts();
    let mut out = T::into_vec(buf).map_err(|_| KernelError::dtype("data dtype"))?;
    let u = upd
        .data::<T>()
        .ok_or_else(|| KernelError::dtype("updates must have data's element type"))?;
    for (j, &off) in offs.iter().enumerate() {
        let src = &u[j * run..(j + 1) * run];
        let dst = &mut out[off..off + run];
        if red == ScatterReduction::None {
            dst.copy_from_slice(src);
        } else {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = combine(red, *d, s);
            }
        }
    }
    HostTensor::make(shape, T::wrap(out))
}

/// Data by value when this node is its last user, else a copy.
fn owned_data(ins: &mut Inputs<'_>) -> KernelResult<HostTensor> {
    match ins.take(0) {
        Some(t) => Ok(t),
        None => Ok(ins.req(0)?.clone()),
    }
}

fn int_indices(ins: &Inputs<'_>, op: &str) -> KernelResult<(Vec<usize>, Vec<i64>)> {
    let ind = ins.req(1)?;
    if !ind.dtype().is_int() {
        return Err(KernelError::dtype(format!("{op} indices must be integers")));
    }
    Ok((ind.shape().to_vec(), ind.to_i64_vec()))
}

/// `ScatterND(data, indices, updates)`.
pub fn scatter_nd(ins: &mut Inputs<'_>, red: ScatterReduction) -> KernelResult<Vec<HostTensor>> {
    let (ishape, idx) = int_indices(ins, "ScatterND")?;
    let upd = ins.req(2)?.clone();
    let data = owned_data(ins)?;
    let lay = ix::nd_layout(data.shape(), &ishape, 0)?;
    if upd.shape() != lay.out_dims.as_slice() {
        return Err(KernelError::shape(format!(
            "ScatterND updates have shape {:?}, expected {:?}",
            upd.shape(),
            lay.out_dims
        )));
    }
    let offs = ix::nd_offsets(data.shape(), &lay, &idx)?;
    let d = data.dtype();
    Ok(vec![
        crate::with_dtype!(d, T => scatter_typed::<T>(data, &offs, lay.slice, &upd, red), _ => Err(KernelError::dtype(format!("ScatterND is not defined for {d}"))))?,
    ])
}

/// `ScatterElements(data, indices, updates)` along `axis`.
pub fn scatter_elements(
    ins: &mut Inputs<'_>,
    axis: i64,
    red: ScatterReduction,
) -> KernelResult<Vec<HostTensor>> {
    let (ishape, idx) = int_indices(ins, "ScatterElements")?;
    let upd = ins.req(2)?.clone();
    if upd.shape() != ishape.as_slice() {
        return Err(KernelError::shape(format!(
            "ScatterElements updates have shape {:?}, indices {ishape:?}",
            upd.shape()
        )));
    }
    let data = owned_data(ins)?;
    let a = super::shape::norm_axis(axis, data.rank())?;
    let offs = ix::element_offsets(data.shape(), &ishape, &idx, a)?;
    let d = data.dtype();
    Ok(vec![
        crate::with_dtype!(d, T => scatter_typed::<T>(data, &offs, 1, &upd, red), _ => Err(KernelError::dtype(format!("ScatterElements is not defined for {d}"))))?,
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

    #[test]
    fn reductions_and_scatter_elements() {
        let data = || HostTensor::from_vec(vec![2, 2], vec![2.0f32, 3.0, 4.0, 5.0]).expect("data");
        let idx = HostTensor::from_vec(vec![1, 1], vec![1i64]).expect("idx");
        let upd = HostTensor::from_vec(vec![1, 2], vec![10.0f32, 1.0]).expect("upd");
        assert_eq!(
            run(data(), idx.clone(), upd.clone(), ScatterReduction::Mul),
            vec![2.0, 3.0, 40.0, 5.0]
        );
        assert_eq!(
            run(data(), idx.clone(), upd.clone(), ScatterReduction::Max),
            vec![2.0, 3.0, 10.0, 5.0]
        );
        assert_eq!(
            run(data(), idx, upd, ScatterReduction::Min),
            vec![2.0, 3.0, 4.0, 1.0]
        );
        // ScatterElements along axis 1: row 0 column 1 and row 1 column 0 get 7 and 8.
        let d = data();
        let idx = HostTensor::from_vec(vec![2, 1], vec![1i64, 0]).expect("idx");
        let upd = HostTensor::from_vec(vec![2, 1], vec![7.0f32, 8.0]).expect("upd");
        let mut ins = Inputs::borrowed(&[Some(&d), Some(&idx), Some(&upd)]);
        let out = scatter_elements(&mut ins, 1, ScatterReduction::None).expect("scatter");
        assert_eq!(out[0].as_f32().expect("f32"), &[2.0, 7.0, 8.0, 5.0]);
    }
}
