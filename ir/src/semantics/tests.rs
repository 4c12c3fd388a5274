use super::axis::*;
use super::broadcast::*;
use super::movement::*;
use super::reshape::*;
use super::size::*;
use super::slice::*;
use super::SemError;
use crate::types::Dim;

#[test]
fn sizes_are_checked() {
    assert_eq!(checked_numel(&[2, 3, 4]), Ok(24));
    assert_eq!(checked_numel(&[]), Ok(1));
    assert!(matches!(
        checked_numel(&[usize::MAX, 2]),
        Err(SemError::Overflow(_))
    ));
    assert!(matches!(
        checked_numel_i64(&[2, -1]),
        Err(SemError::NegativeDim { dim: -1, .. })
    ));
    assert!(checked_bytes(usize::MAX / 2, 4).is_err());
    assert_eq!(strides(&[2, 3, 4]), vec![12, 4, 1]);
}

#[test]
fn axes_normalize_and_name_the_attribute() {
    assert_eq!(norm_axis(-1, 3), Ok(2));
    let e = norm_axis(3, 3).unwrap_err();
    assert_eq!(e.to_string(), "axis 3 is out of range for rank 3");
    assert_eq!(split_point("axis", -1, 3), Ok(2));
    assert_eq!(split_point("axis", 3, 3), Ok(3));
    assert!(split_point("axis", 4, 3).is_err());
    assert_eq!(shape_range(4, Some(-3), None), 1..4);
    assert_eq!(shape_range(4, Some(3), Some(1)), 3..3);
}

#[test]
fn broadcasting_concrete_and_symbolic() {
    assert_eq!(
        broadcast_shapes::<usize>(&[&[2, 1, 3], &[4, 1]]),
        Ok(vec![2, 4, 3])
    );
    let e = broadcast_shapes::<usize>(&[&[2, 3], &[4]]).unwrap_err();
    assert_eq!(e.to_string(), "shapes [[2, 3], [4]] do not broadcast");
    let s = |x: &str| Dim::Sym(x.into());
    assert_eq!(
        broadcast_symbolic(&[s("b"), Dim::Fixed(1)], &[Dim::Fixed(5)]),
        Ok(vec![s("b"), Dim::Fixed(5)])
    );
    assert_eq!(broadcast_dim(&Dim::Fixed(3), &Dim::Fixed(4)), Err((3, 4)));
    assert_eq!(broadcast_dim(&s("a"), &s("c")), Ok(Dim::Unknown));
    assert_eq!(
        broadcast_index(&[3, 1], &[2, 3, 2]),
        Ok(vec![0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2])
    );
    assert_eq!(broadcast_index(&[2], &[0, 2]), Ok(vec![]));
}

#[test]
fn slices_clamp_like_onnx() {
    // Negative step from past the end down to before the start.
    let p = slice_axis(5, i64::MAX, i64::MIN, -2).expect("plan");
    assert_eq!((p.start, p.len), (4, 3));
    // Steps at the extremes do not overflow.
    assert_eq!(slice_axis(5, 0, i64::MAX, i64::MAX).map(|p| p.len), Ok(1));
    assert_eq!(slice_axis(5, -1, i64::MIN, i64::MIN).map(|p| p.len), Ok(1));
    assert_eq!(slice_axis(0, 0, 10, -1).map(|p| p.len), Ok(0));
    assert!(slice_axis(5, 0, 1, 0).is_err());
    let plan = slice_plan(&[2, 3], &[2], &[-100], Some(&[1]), Some(&[-2])).expect("plan");
    let data: Vec<i32> = (0..6).collect();
    assert_eq!(slice_copy(&data, &[2, 3], &plan), Ok(vec![2, 0, 5, 3]));
    // A repeated axis is undefined in ONNX: refused.
    assert!(matches!(
        slice_plan(&[4], &[0, 1], &[4, 4], Some(&[0, -1]), None),
        Err(SemError::RepeatedAxes(_))
    ));
}

#[test]
fn reshape_family() {
    assert_eq!(
        reshape_dims(&[2, 3, 4], &[0, -1, 2], false),
        Ok(vec![2, 6, 2])
    );
    assert_eq!(reshape_dims(&[0, 3], &[0, 3], true), Ok(vec![0, 3]));
    assert!(reshape_dims(&[2, 3, 4], &[5, -1], false).is_err());
    assert!(reshape_dims(&[2, 3], &[-1, -1], false).is_err());
    assert_eq!(squeeze_dims(&[1, 3, 1], None), Ok(vec![3]));
    assert_eq!(squeeze_dims(&[1, 3, 1], Some(&[-1])), Ok(vec![1, 3]));
    assert!(squeeze_dims(&[1, 3], Some(&[1])).is_err());
    assert_eq!(unsqueeze_dims(&[3], &[0, -1]), Ok(vec![1, 3, 1]));
    assert!(matches!(
        unsqueeze_dims(&[3], &[0, 0]),
        Err(SemError::RepeatedAxes(_))
    ));
    assert_eq!(flatten_dims(&[2, 3, 4], -1), Ok([6, 4]));
}

#[test]
fn data_movement() {
    let x: Vec<u8> = (0..6).collect();
    let (d, v) = gather(&x, &[2, 3], &[-1, 0], &[2], 0).expect("gather");
    assert_eq!((d, v), (vec![2, 3], vec![3, 4, 5, 0, 1, 2]));
    // Out-of-range indices are an error even when there is no data to read.
    assert!(matches!(
        gather::<u8>(&[], &[0, 3], &[5], &[1], 1),
        Err(SemError::Index { index: 5, dim: 3 })
    ));
    let (d, v) = concat(&[(&x[..], &[2, 3][..]), (&x[..2], &[2, 1][..])], 1).expect("concat");
    assert_eq!((d, v), (vec![2, 4], vec![0, 1, 2, 0, 3, 4, 5, 1]));
    assert!(concat_dims(&[&[2, 3], &[3, 3]], 1).is_err());
    let (d, v) = where_select(
        (&[true, false][..], &[2][..]),
        (&[1i64][..], &[1][..]),
        (&[7, 8][..], &[2][..]),
    )
    .expect("where");
    assert_eq!((d, v), (vec![2], vec![1, 8]));
    assert_eq!(constant_of_shape(&[2, 2], &[5u8]), Ok(vec![5; 4]));
    assert!(constant_of_shape(&[2], &[1u8, 2]).is_err());
}

#[test]
fn ranges_count_exactly_and_compute_in_the_element_type() {
    assert_eq!(range_len_int(0, 10, 3), Ok(4));
    assert_eq!(range_len_int(10, 0, -3), Ok(4));
    assert_eq!(range_len_int(0, 0, 1), Ok(0));
    // `limit - start` overflows i64 here; the count is still exact.
    assert_eq!(range_len_int(i64::MAX - 1, i64::MIN, -(1 << 62)), Ok(4));
    assert!(range_len_int(0, 1, 0).is_err());
    assert!(range_len_float(0.0, f64::INFINITY, 1.0).is_err());
    assert_eq!(range_len_float(0.0, 1.0, 0.25), Ok(4));
    assert_eq!(range_values(1i64, 2, 3), vec![1, 3, 5]);
    // f32 ranges round each step in f32, as ONNX's `start + i * delta` in the input type.
    let v = range_values(0.1f32, 0.1f32, 8);
    assert_eq!(v[7], 0.1f32 + 7.0f32 * 0.1f32);
}
