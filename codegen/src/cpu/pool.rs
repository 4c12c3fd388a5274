//! A pool of freed tensor buffers.
//!
//! Activations of one layer are the same sizes as the next layer's, so a buffer freed after its
//! last use is usually the right size for a value produced a few steps later. Reusing it avoids
//! the page faults of fresh large allocations (glibc maps big blocks anew on every `malloc`).
//! Buffers come back with stale contents: kernels that do not overwrite every element ask for
//! zeroed buffers.

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

    /// A vector of `n` elements whose contents are unspecified (stale data or zeros).
    pub fn alloc<T: Elem>(&mut self, n: usize) -> Vec<T> {
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
                    return v;
                }
            }
        }
        self.misses += 1;
        vec![T::default(); n]
    }

    /// A vector of `n` default (zero) elements.
    pub fn alloc_zeroed<T: Elem>(&mut self, n: usize) -> Vec<T> {
        let mut v = self.alloc::<T>(n);
        v.fill(T::default());
        v
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_a_freed_buffer_of_the_right_type() {
        let mut p = BufferPool::new();
        let v: Vec<f32> = p.alloc(10_000);
        let ptr = v.as_ptr();
        p.recycle(TensorBuf::F32(v));
        let i: Vec<i64> = p.alloc(10_000);
        assert_ne!(i.as_ptr() as usize, ptr as usize);
        let w: Vec<f32> = p.alloc(9_000);
        assert_eq!(w.as_ptr(), ptr);
        assert_eq!(w.len(), 9_000);
        let z: Vec<f32> = p.alloc_zeroed(5);
        assert!(z.iter().all(|&x| x == 0.0));
    }
}
