//! A clear error instead of a bus error when a memory-mapped input shrinks while in use.
//!
//! Inputs are memory-mapped. If another process truncates a mapped file, reading a page past
//! its new end raises SIGBUS, which would kill the process with no message and leave the output
//! temporaries of the write in progress behind. The exporter checks sizes before it starts
//! writing, but a file cut during the passes' reads or during the write itself cannot be caught
//! by a check: only the fault says so.
//!
//! [`install`] (called once by the CLI) sets a SIGBUS handler that names the file the faulting
//! address belongs to, removes every registered output temporary, and exits with status 1. A
//! signal handler may only call async-signal-safe functions, so it allocates nothing and takes
//! no lock: the mapped ranges and temporaries live in a fixed table of slots, filled by
//! [`register_mapped`] / [`register_temp`] from ordinary code and read by the handler through
//! atomics, and the handler calls only `write(2)`, `unlink(2)` and `_exit(2)`.
//!
//! A slot's path is written only while the slot is marked busy, and the handler reads only slots
//! marked in use. Once the handler starts it sets [`DYING`], after which no slot is freed or
//! reused, so the paths it reads stay intact. A table that is full (more than [`SLOTS`] files at
//! once) or a path longer than [`PATH_BYTES`] only loses the file's name in the message, or the
//! removal of that temporary (then the next run into its folder removes it as a stale one).

use std::path::Path;

/// How many mapped files and temporaries can be registered at once.
pub const SLOTS: usize = 128;
/// The longest path (in bytes, without the terminating NUL) a slot holds.
pub const PATH_BYTES: usize = 1023;

/// The test-only hook: when this environment variable names a file, every output temporary,
/// right after it is created, prints [`TEST_HOLD_LINE`] to stderr and waits (at most a minute)
/// until that file exists. `tests/bad_input.rs` uses it to truncate an input at a known point of
/// a write. Nothing else sets or reads it.
pub const TEST_HOLD_ENV: &str = "ORTHO_TEST_HOLD_AFTER_TEMP";
/// The line the test-only hook prints once it waits.
pub const TEST_HOLD_LINE: &str = "ortho-opt test hook: holding after creating a temporary";

#[cfg(unix)]
mod imp {
    use super::{PATH_BYTES, SLOTS};
    use std::cell::UnsafeCell;
    use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

    const FREE: u8 = 0;
    const BUSY: u8 = 1;
    const MAPPED: u8 = 2;
    const TEMP: u8 = 3;

    /// One registered file: a mapped input's address range, or an output temporary.
    pub(super) struct Slot {
        state: AtomicU8,
        start: AtomicUsize,
        len: AtomicUsize,
        /// The path, NUL-terminated; empty (a lone NUL) when it did not fit.
        path: UnsafeCell<[u8; PATH_BYTES + 1]>,
    }

    // SAFETY: `path` is written only by the thread that moved the slot from FREE to BUSY, and
    // read only after an Acquire load sees MAPPED or TEMP (published with Release after the
    // write); the slot returns to FREE only through BUSY, never while the handler runs (DYING).
    unsafe impl Sync for Slot {}

    #[allow(clippy::declare_interior_mutable_const)]
    const EMPTY: Slot = Slot {
        state: AtomicU8::new(FREE),
        start: AtomicUsize::new(0),
        len: AtomicUsize::new(0),
        path: UnsafeCell::new([0; PATH_BYTES + 1]),
    };

    pub(super) static TABLE: [Slot; SLOTS] = [EMPTY; SLOTS];
    /// Set by the handler first thing: from then on no slot is freed or reused.
    pub(super) static DYING: AtomicBool = AtomicBool::new(false);

    /// Claims a free slot and fills it; `None` when the table is full.
    pub(super) fn claim(kind_mapped: bool, start: usize, len: usize, path: &[u8]) -> Option<usize> {
        if DYING.load(Ordering::Acquire) {
            return None;
        }
        for (i, s) in TABLE.iter().enumerate() {
            if s.state
                .compare_exchange(FREE, BUSY, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                // SAFETY: this thread owns the slot while it is BUSY (see `Slot`).
                let buf = unsafe { &mut *s.path.get() };
                let n = if path.len() <= PATH_BYTES && !path.contains(&0) {
                    path.len()
                } else {
                    0
                };
                buf[..n].copy_from_slice(&path[..n]);
                buf[n] = 0;
                s.start.store(start, Ordering::Relaxed);
                s.len.store(len, Ordering::Relaxed);
                let kind = if kind_mapped { MAPPED } else { TEMP };
                s.state.store(kind, Ordering::Release);
                return Some(i);
            }
        }
        None
    }

    pub(super) fn release(i: usize) {
        if DYING.load(Ordering::Acquire) {
            return;
        }
        let s = &TABLE[i];
        s.state.store(BUSY, Ordering::Release);
        s.state.store(FREE, Ordering::Release);
    }

    fn say(bytes: &[u8]) {
        // SAFETY: write(2) is async-signal-safe; `bytes` is a valid buffer.
        unsafe {
            libc::write(2, bytes.as_ptr().cast(), bytes.len());
        }
    }

    /// The path bytes of slot `s` up to its NUL.
    pub(super) fn path_of(s: &Slot) -> &[u8] {
        // SAFETY: read only for MAPPED/TEMP slots, which nobody writes (see `Slot`).
        let buf = unsafe { &*s.path.get() };
        let n = buf.iter().position(|&b| b == 0).unwrap_or(0);
        &buf[..n]
    }

    extern "C" fn on_sigbus(
        _sig: libc::c_int,
        info: *mut libc::siginfo_t,
        _ctx: *mut libc::c_void,
    ) {
        DYING.store(true, Ordering::SeqCst);
        // SAFETY: the kernel passes a valid siginfo with SA_SIGINFO; si_addr is the fault address.
        let addr = unsafe { (*info).si_addr() } as usize;
        let culprit = TABLE.iter().find(|s| {
            s.state.load(Ordering::Acquire) == MAPPED && {
                let start = s.start.load(Ordering::Relaxed);
                addr >= start && addr - start < s.len.load(Ordering::Relaxed)
            }
        });
        match culprit.map(path_of) {
            Some(p) if !p.is_empty() => {
                say(b"error: input file '");
                say(p);
                say(b"' was truncated or changed by another process while in use (reading its memory map failed with SIGBUS); no output was written\n");
            }
            _ => say(b"error: a memory-mapped input file was truncated or changed by another process while in use (SIGBUS); no output was written\n"),
        }
        for s in TABLE.iter() {
            if s.state.load(Ordering::Acquire) == TEMP {
                // SAFETY: the path is NUL-terminated; unlink(2) is async-signal-safe. An empty
                // path (one that did not fit) fails harmlessly.
                let buf = unsafe { &*s.path.get() };
                if buf[0] != 0 {
                    unsafe {
                        libc::unlink(buf.as_ptr().cast());
                    }
                }
            }
        }
        // SAFETY: _exit(2) is async-signal-safe and never returns.
        unsafe { libc::_exit(1) }
    }

    pub(super) fn install() -> std::io::Result<()> {
        // SAFETY: a zeroed sigaction is a valid starting point; the handler has the SA_SIGINFO
        // signature and touches only the static table and async-signal-safe calls.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_sigbus as *const () as usize;
            act.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut act.sa_mask);
            if libc::sigaction(libc::SIGBUS, &act, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// A registration in the signal-safe table, removed when dropped.
#[derive(Debug)]
pub struct Registration {
    #[cfg(unix)]
    slot: Option<usize>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(i) = self.slot.take() {
            imp::release(i);
        }
    }
}

#[cfg(unix)]
fn path_bytes(path: &Path) -> &[u8] {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str().as_bytes()
}

/// Registers a memory-mapped input: a fault inside `bytes` is reported as `path` truncated.
pub fn register_mapped(path: &Path, bytes: &[u8]) -> Registration {
    #[cfg(unix)]
    {
        Registration {
            slot: imp::claim(true, bytes.as_ptr() as usize, bytes.len(), path_bytes(path)),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (path, bytes);
        Registration {}
    }
}

/// Registers an output temporary, removed by the handler if the process dies of SIGBUS.
pub fn register_temp(path: &Path) -> Registration {
    #[cfg(unix)]
    {
        Registration {
            slot: imp::claim(false, 0, 0, path_bytes(path)),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Registration {}
    }
}

/// Installs the SIGBUS handler (the CLI calls it once at start; a library user may too). On
/// Linux this replaces the standard library's SIGBUS handler, which only serves stack-overflow
/// reports there (those arrive as SIGSEGV).
pub fn install() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        imp::install()
    }
    #[cfg(not(unix))]
    {
        Ok(())
    }
}

/// The test-only hold (see [`TEST_HOLD_ENV`]): a no-op unless the variable is set.
pub(crate) fn test_hold() {
    let Some(go) = std::env::var_os(TEST_HOLD_ENV) else {
        return;
    };
    eprintln!("{TEST_HOLD_LINE}");
    let go = std::path::PathBuf::from(go);
    // Bounded: a forgotten variable costs at most a minute, never a hang.
    for _ in 0..6000 {
        if go.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn slots_are_claimed_and_released() {
        let a = register_temp(Path::new("/tmp/a"));
        let b = register_mapped(Path::new("/tmp/b"), &[1, 2, 3]);
        let (ia, ib) = (a.slot.expect("slot"), b.slot.expect("slot"));
        assert_ne!(ia, ib);
        drop(a);
        let c = register_temp(Path::new("/tmp/c"));
        assert!(c.slot.is_some());
        drop((b, c));
    }

    #[test]
    fn a_path_that_does_not_fit_is_registered_without_a_name() {
        let long = "x".repeat(PATH_BYTES + 1);
        let r = register_temp(Path::new(&long));
        let i = r.slot.expect("slot");
        assert!(imp::path_of(&imp::TABLE[i]).is_empty());
        let short = register_temp(Path::new("/tmp/short"));
        let j = short.slot.expect("slot");
        assert_eq!(imp::path_of(&imp::TABLE[j]), b"/tmp/short");
    }
}
