//! Native kernels for `ortho.FusedElementwise` nodes, compiled with Cranelift.
//!
//! ```text
//! let f = FusedElementwise::from_op(&node.op).ok_or(..)?;     // the node's typed payload
//! let k = JitKernel::cached(&f)?;                             // compiled once per program
//! k.run(&[x.as_slice(), g.as_slice()], &mut out, n, row_len)?; // n = numel(result), row_len = last dim
//! ```
//!
//! **Operands.** The node's result has `n` elements, seen as `n / row_len` rows of `row_len`
//! (the result's last dimension; 1 for a rank-0 result). Operand `k` is passed as a slice whose
//! length its form fixes ([`Form`]): `Full` → `n`, `Scalar` → 1, `LastAxis` → `row_len`
//! (the same vector for every row), `PerRow` → `n / row_len` (one value per row). Slices are
//! row-major and contiguous; `run` checks every length and returns [`JitError::Operand`] on a
//! mismatch, so model data never reaches an out-of-bounds access.
//!
//! **Code.** One function per program: a loop over rows, and in each row an f32x4 loop with a
//! one-element tail that runs the same vector code on a splatted element. Programs without
//! `LastAxis`/`PerRow` operands run as one row of `n`. Loads are `readonly + can_move`, so
//! Cranelift may keep them where it likes. exp, log, tanh, sigmoid and erf are polynomial
//! approximations in CLIF (`math.rs`, coefficients from `fit_coefficients.py`), within a few
//! ulps of the correctly rounded result (measured in `tests.rs`); `powf` calls Rust's `f32::powf`
//! per lane. `fma` is used only where the host has it (Cranelift would otherwise call `fmaf`).
//!
//! **Threads.** [`JitKernel::run`] splits work of at least [`PARALLEL_MIN`] elements over up to
//! [`DEFAULT_THREADS`] scoped threads (by rows, or by aligned chunks of a flat range);
//! [`JitKernel::run_with`] takes the thread count.
//!
//! **Reference.** [`interpret`] evaluates a program one element at a time in f64, rounding each
//! instruction's result to f32: the semantics the kernels approximate.

mod compile;
mod interp;
mod math;
#[cfg(test)]
mod tests;

pub use interp::interpret;
pub use ortho_ir::fused::{Form, FusedElementwise};

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Work below this many elements runs on the calling thread.
pub const PARALLEL_MIN: usize = 1 << 16;
/// Threads [`JitKernel::run`] uses at most (fewer when the machine has fewer cores).
pub const DEFAULT_THREADS: usize = 2;

/// Why a kernel could not be compiled or run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JitError {
    /// The program is malformed (see `FusedElementwise::validate`).
    #[error("invalid fused program: {0}")]
    Program(#[from] ortho_ir::fused::FusedError),
    /// The host cannot run Cranelift code, or a setting was refused.
    #[error("the JIT is not available on this host: {0}")]
    Unsupported(String),
    /// Cranelift failed to compile the function (a bug of ours; the message says where).
    #[error("Cranelift failed: {0}")]
    Codegen(String),
    /// `n`, `row_len` or the output do not fit together.
    #[error("{0}")]
    Shape(String),
    /// An operand slice has the wrong length for its form.
    #[error("operand {index} ({form}) has {got} elements, expected {expected}")]
    Operand {
        index: usize,
        form: &'static str,
        expected: usize,
        got: usize,
    },
}

/// The signature of a compiled kernel: operand base pointers, output, rows, row length.
type KernelFn = unsafe extern "C" fn(*const *const f32, *mut f32, u64, u64);

/// A compiled fused elementwise kernel. Cheap to share (`Arc`) and safe to call from many
/// threads at once.
pub struct JitKernel {
    program: FusedElementwise,
    func: KernelFn,
    /// Whether any operand is `LastAxis` or `PerRow`, so rows matter.
    uses_rows: bool,
    /// Owns the code memory; freed on drop. Behind a mutex only because `JITModule` is not
    /// `Sync`; the compiled function never touches it.
    code: Mutex<Option<cranelift_jit::JITModule>>,
}

impl std::fmt::Debug for JitKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JitKernel")
            .field("program", &self.program.to_string())
            .finish()
    }
}

impl Drop for JitKernel {
    fn drop(&mut self) {
        let module = self
            .code
            .get_mut()
            .map(Option::take)
            .unwrap_or_else(|p| p.into_inner().take());
        if let Some(m) = module {
            // SAFETY: `&mut self` means no `run` is executing, and `func` dies with `self`.
            unsafe { m.free_memory() };
        }
    }
}

impl JitKernel {
    /// Compiles `f` (about a millisecond for a typical chain).
    pub fn compile(f: &FusedElementwise) -> Result<JitKernel, JitError> {
        Self::compile_with(f, &mut compile::Options::default())
    }

    fn compile_with(f: &FusedElementwise, o: &mut compile::Options) -> Result<JitKernel, JitError> {
        f.validate().map_err(JitError::Program)?;
        let uses_rows = f
            .forms
            .iter()
            .any(|x| matches!(x, Form::LastAxis | Form::PerRow));
        let (module, func) = compile::compile_with(f, o)?;
        Ok(JitKernel {
            program: f.clone(),
            func,
            uses_rows,
            code: Mutex::new(Some(module)),
        })
    }

    /// The kernel for `f` from the process-wide cache, compiling it on first use.
    pub fn cached(f: &FusedElementwise) -> Result<Arc<JitKernel>, JitError> {
        static CACHE: OnceLock<KernelCache> = OnceLock::new();
        CACHE.get_or_init(KernelCache::new).get_or_compile(f)
    }

    pub fn program(&self) -> &FusedElementwise {
        &self.program
    }

    /// Computes `out[i]` for `i < n`, on up to [`DEFAULT_THREADS`] threads when `n` is at least
    /// [`PARALLEL_MIN`]. See the module documentation for the operand lengths.
    pub fn run(
        &self,
        inputs: &[&[f32]],
        out: &mut [f32],
        n: usize,
        row_len: usize,
    ) -> Result<(), JitError> {
        let threads = if n >= PARALLEL_MIN {
            std::thread::available_parallelism()
                .map_or(1, |p| p.get())
                .min(DEFAULT_THREADS)
        } else {
            1
        };
        self.run_with(inputs, out, n, row_len, threads)
    }

    /// Like [`run`](Self::run) with an explicit thread count (1 = the calling thread only).
    pub fn run_with(
        &self,
        inputs: &[&[f32]],
        out: &mut [f32],
        n: usize,
        row_len: usize,
        threads: usize,
    ) -> Result<(), JitError> {
        let rows = check_operands(&self.program, inputs, out, n, row_len)?;
        if n == 0 {
            return Ok(());
        }
        // Without row-dependent operands the whole range is one row.
        let (rows, row_len) = if self.uses_rows {
            (rows, row_len)
        } else {
            (1, n)
        };
        let threads = threads.max(1);
        let units = if self.uses_rows {
            rows
        } else {
            n.div_ceil(CHUNK_ALIGN)
        };
        let parts = threads.min(units).max(1);
        if parts == 1 {
            // SAFETY: lengths were checked against the forms above.
            unsafe { self.call(inputs, out.as_mut_ptr(), 0, rows, row_len) };
            return Ok(());
        }
        // Split into `parts` contiguous ranges of rows (or of CHUNK_ALIGN-element blocks).
        let per = units.div_ceil(parts);
        let elems_per_unit = if self.uses_rows { row_len } else { CHUNK_ALIGN };
        std::thread::scope(|s| {
            let mut rest: &mut [f32] = out;
            let mut unit0 = 0;
            while unit0 < units {
                let u = per.min(units - unit0);
                let len = (u * elems_per_unit).min(rest.len());
                let (chunk, tail) = std::mem::take(&mut rest).split_at_mut(len);
                rest = tail;
                let start = unit0;
                let mut go = move || {
                    let (r0, nrows, rl) = if self.uses_rows {
                        (start, u, row_len)
                    } else {
                        (start * CHUNK_ALIGN, 1, chunk.len())
                    };
                    // SAFETY: the chunk lies inside `out`, and the operand offsets computed by
                    // `call` stay inside the checked operand slices.
                    unsafe { self.call(inputs, chunk.as_mut_ptr(), r0, nrows, rl) };
                };
                if unit0 + u >= units {
                    go();
                } else {
                    s.spawn(go);
                }
                unit0 += u;
            }
        });
        Ok(())
    }

    /// Calls the kernel on `rows` rows of `row_len` starting at row `r0` (or, without
    /// row-dependent operands, on `row_len` elements starting at element `r0`).
    ///
    /// # Safety
    /// The operand slices must have the lengths their forms require for the whole problem, and
    /// `out` must be valid for `rows * row_len` writes.
    unsafe fn call(
        &self,
        inputs: &[&[f32]],
        out: *mut f32,
        r0: usize,
        rows: usize,
        row_len: usize,
    ) {
        let full_off = if self.uses_rows { r0 * row_len } else { r0 };
        let ptrs: Vec<*const f32> = inputs
            .iter()
            .zip(&self.program.forms)
            .map(|(s, form)| match form {
                Form::Full => s.as_ptr().wrapping_add(full_off),
                Form::PerRow => s.as_ptr().wrapping_add(r0),
                Form::Scalar | Form::LastAxis => s.as_ptr(),
            })
            .collect();
        // SAFETY: guaranteed by the caller; the compiled code reads only within these ranges.
        unsafe { (self.func)(ptrs.as_ptr(), out, rows as u64, row_len as u64) }
    }
}

/// Flat (row-less) work is split on multiples of this many elements.
const CHUNK_ALIGN: usize = 64;

/// Checks the operand and output lengths against the forms; returns the number of rows.
pub fn check_operands(
    f: &FusedElementwise,
    inputs: &[&[f32]],
    out: &[f32],
    n: usize,
    row_len: usize,
) -> Result<usize, JitError> {
    if inputs.len() != f.forms.len() {
        return Err(JitError::Shape(format!(
            "{} operands given, the program has {}",
            inputs.len(),
            f.forms.len()
        )));
    }
    if out.len() != n {
        return Err(JitError::Shape(format!(
            "the output has {} elements, expected n = {n}",
            out.len()
        )));
    }
    let rows = if n == 0 {
        0
    } else if row_len == 0 || !n.is_multiple_of(row_len) {
        return Err(JitError::Shape(format!(
            "n = {n} is not a whole number of rows of {row_len}"
        )));
    } else {
        n / row_len
    };
    for (index, (s, form)) in inputs.iter().zip(&f.forms).enumerate() {
        let expected = match form {
            Form::Full => n,
            Form::Scalar => 1,
            Form::LastAxis => row_len,
            Form::PerRow => rows,
        };
        if s.len() != expected && n > 0 {
            return Err(JitError::Operand {
                index,
                form: form.name(),
                expected,
                got: s.len(),
            });
        }
    }
    Ok(rows)
}

/// Compiled kernels keyed by program (instructions, constants and forms).
#[derive(Default)]
pub struct KernelCache {
    map: Mutex<HashMap<FusedElementwise, Arc<JitKernel>>>,
}

impl KernelCache {
    pub fn new() -> KernelCache {
        KernelCache::default()
    }

    /// The kernel for `f`, compiled on first use. Compilation happens outside the lock, so two
    /// threads may compile the same program once each; the first result is kept.
    pub fn get_or_compile(&self, f: &FusedElementwise) -> Result<Arc<JitKernel>, JitError> {
        if let Some(k) = self.lock().get(f) {
            return Ok(k.clone());
        }
        let k = Arc::new(JitKernel::compile(f)?);
        Ok(self.lock().entry(f.clone()).or_insert(k).clone())
    }

    /// Number of kernels held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FusedElementwise, Arc<JitKernel>>> {
        // A panic while holding the lock cannot leave the map half-updated (insert is atomic
        // from our side), so a poisoned lock is still usable.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}
