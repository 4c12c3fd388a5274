//! A pool of freed tensor buffers.
//!
//! Activations of one layer are the same sizes as the next layer's, so a buffer freed after its
//! last use is usually the right size for a value produced a few steps later. Reusing it avoids
//! the page faults of fresh large allocations (glibc maps big blocks anew on every `malloc`).
//! Buffers come back with stale contents: kernels that do not overwrite every element ask for
//! zeroed buffers.
//!
//! A fresh buffer is reserved with `try_reserve_exact`: a result larger than the memory the
//! system grants (a shape computed from input data, an Expand or Tile to a huge shape) is a
//! [`KernelError::Alloc`] that the executor reports with the node, never an abort.

use crate::cpu::error::{KernelError, KernelResult};
use crate::cpu::tensor::{Elem, TensorBuf};

/// Buffers smaller than this are not worth keeping.
const MIN_KEEP: usize = 4096;
/// The pool holds at most this many buffers; the oldest go first.
const MAX_BUFFERS: usize = 48;

#[derive(Debug, Default)]
pub struct BufferPool {
    free: Vec<TensorBuf>,
    /// Allocations served from the pool and fresh, for statistics.
    pub hits: u64,
    pub misses: u64,
}

impl BufferPool {
    pub fn new() -> BufferPool {
        BufferPool::default()
    }

    /// A vector of `n` elements whose contents are unspecified (stale data or zeros); an error
    /// when the system cannot provide the memory.
    pub fn alloc<T: Elem>(&mut self, n: usize) -> KernelResult<Vec<T>> {
        if n >= MIN_KEEP {
            // Best fit among buffers of the right type that are not more than twice too large.
            let mut best: Option<(usize, usize)> = None;
            for (i, b) in self.free.iter().enumerate() {
                if b.dtype() == T::DTYPE {
                    let c = b.capacity();
                    if c >= n && c <= 2 * n + MIN_KEEP && best.is_none_or(|(_, bc)| c < bc) {
                        best = Some((i, c));
                    }
                }
            }
            if let Some((i, _)) = best {
                let b = self.free.swap_remove(i);
                if let Ok(mut v) = T::into_vec(b) {
                    self.hits += 1;
                    if v.len() >= n {
                        v.truncate(n);
                    } else {
                        v.resize(n, T::default());
                    }
                    return Ok(v);
                }
            }
        }
        self.misses += 1;
        try_vec(n)
    }

    /// A vector of `n` default (zero) elements; an error when the memory is not available.
    pub fn alloc_zeroed<T: Elem>(&mut self, n: usize) -> KernelResult<Vec<T>> {
        let mut v = self.alloc::<T>(n)?;
        v.fill(T::default());
        Ok(v)
    }

    /// Gives a buffer back for reuse.
    pub fn recycle(&mut self, buf: TensorBuf) {
        if buf.capacity() < MIN_KEEP {
            return;
        }
        if self.free.len() >= MAX_BUFFERS {
            self.free.remove(0);
        }
        self.free.push(buf);
    }

    /// Bytes held by the pool.
    pub fn held_bytes(&self) -> usize {
        self.free
            .iter()
            .map(|b| {
                b.capacity()
                    * b.dtype()
                        .bits()
                        .map(|x| (x as usize).div_ceil(8))
                        .unwrap_or(1)
            })
            .sum()
    }
}

/// A fresh vector of `n` default elements, or [`KernelError::Alloc`] with the bytes asked for
/// when the allocator refuses (or the byte count does not fit a `usize`).
pub fn try_vec<T: Elem>(n: usize) -> KernelResult<Vec<T>> {
    let bytes = n.checked_mul(std::mem::size_of::<T>());
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| KernelError::Alloc {
        bytes: bytes.unwrap_or(usize::MAX),
        dtype: T::DTYPE.to_string(),
        elements: n,
    })?;
    v.resize(n, T::default());
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_a_freed_buffer_of_the_right_type() {
        let mut p = BufferPool::new();
        let v: Vec<f32> = p.alloc(10_000).expect("alloc");
        let ptr = v.as_ptr();
        p.recycle(TensorBuf::F32(v));
        let i: Vec<i64> = p.alloc(10_000).expect("alloc");
        assert_ne!(i.as_ptr() as usize, ptr as usize);
        let w: Vec<f32> = p.alloc(9_000).expect("alloc");
        assert_eq!(w.as_ptr(), ptr);
        assert_eq!(w.len(), 9_000);
        let z: Vec<f32> = p.alloc_zeroed(5).expect("alloc");
        assert!(z.iter().all(|&x| x == 0.0));
    }

    #[test]
    fn an_allocation_beyond_memory_is_an_error() {
        let mut p = BufferPool::new();
        // 2^61 f64 elements: 2^64 bytes, more than any address space.
        let e = p.alloc::<f64>(1 << 61).expect_err("too large");
        assert!(matches!(e, KernelError::Alloc { elements, .. } if elements == 1 << 61));
        // 2^44 f32 elements (64 TiB): a valid size no machine here grants.
        let e = p.alloc::<f32>(1 << 44).expect_err("too large");
        assert_eq!(
            e.to_string(),
            "cannot allocate 70368744177664 bytes (17592186044416 elements of f32) for a result: out of memory"
        );
    }
}
