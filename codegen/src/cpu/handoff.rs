//! A fork-join for short, bandwidth-bound kernels (decode's one-row products): the calling thread
//! runs part 0 and hands parts 1.. to persistent workers that spin briefly between jobs.
//!
//! Why not rayon: a decode step is ~270 products of 15–3,500 µs each with a few µs of other work
//! between them. Rayon's workers go to sleep between such jobs, and waking one (a futex wake, an
//! inter-processor interrupt in a VM) was measured at ~25 µs per split on this machine — more than
//! a small product takes — so two threads ran a decode step slower than one. Here a worker spins
//! for [`SPIN`] after each job before it parks, so the next product finds it awake; a parked
//! worker is unparked by the next job. Only one caller uses the workers at a time: a concurrent
//! caller (e.g. products run from inside a rayon loop) gets `false` and splits its work some other
//! way.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long a worker stays awake after a job, waiting for the next one.
const SPIN: Duration = Duration::from_micros(300);

/// The job a worker runs: part `part` of `f`. The reference is only dereferenced between the
/// post and the worker's `done` store, while [`run`] is blocked waiting for that store.
#[derive(Clone, Copy)]
struct Job {
    f: *const (dyn Fn(usize) + Sync),
    part: usize,
}

struct Slot {
    /// Incremented by the caller when it posts a job.
    posted: AtomicU64,
    /// Set to `posted`'s value by the worker when that job finished.
    done: AtomicU64,
    parked: AtomicBool,
    panicked: AtomicBool,
    job: UnsafeCell<Job>,
    thread: OnceLock<Thread>,
}

// SAFETY: `job` is written by the single caller holding the pool lock before `posted` is
// incremented (SeqCst), and read by the worker only after it observed that increment; the caller
// does not write it again before `done` says the worker is finished with it.
unsafe impl Sync for Slot {}
unsafe impl Send for Slot {}

struct Pool {
    slots: Vec<Arc<Slot>>,
    lock: Mutex<()>,
}

fn noop(_: usize) {}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .saturating_sub(1);
        let slots: Vec<Arc<Slot>> = (0..n)
            .map(|_| {
                Arc::new(Slot {
                    posted: AtomicU64::new(0),
                    done: AtomicU64::new(0),
                    parked: AtomicBool::new(false),
                    panicked: AtomicBool::new(false),
                    job: UnsafeCell::new(Job {
                        f: &noop as &(dyn Fn(usize) + Sync),
                        part: 0,
                    }),
                    thread: OnceLock::new(),
                })
            })
            .collect();
        let mut started = Vec::new();
        for (i, s) in slots.iter().enumerate() {
            let s2 = s.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("ortho-handoff-{i}"))
                .spawn(move || worker(&s2));
            match spawned {
                Ok(h) => {
                    let _ = s.thread.set(h.thread().clone());
                    started.push(s.clone());
                }
                // No thread, no worker: callers then see fewer workers and split less.
                Err(_) => break,
            }
        }
        Pool {
            slots: started,
            lock: Mutex::new(()),
        }
    })
}

fn worker(s: &Slot) {
    let mut seen = 0u64;
    loop {
        let mut since = Instant::now();
        let mut spins = 0u32;
        loop {
            if s.posted.load(SeqCst) != seen {
                break;
            }
            spins += 1;
            // Spin in earnest only briefly, then yield between looks: on a machine with as many
            // threads as cores, the kernels' rayon workers need this core too, and a worker
            // descheduled in the middle of their split would make everyone wait for it.
            if spins < 256 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
            if spins % 64 == 0 && since.elapsed() >= SPIN {
                // Announce the park, then look once more: a job posted after this store sees
                // `parked` and unparks; one posted before it is seen by the second load.
                s.parked.store(true, SeqCst);
                if s.posted.load(SeqCst) == seen {
                    std::thread::park();
                }
                s.parked.store(false, SeqCst);
                since = Instant::now();
                spins = 0;
            }
        }
        seen = s.posted.load(SeqCst);
        // SAFETY: see `Slot`'s Sync impl: the job was written before `posted` changed and stays
        // valid until `done` is stored below.
        let job = unsafe { *s.job.get() };
        let f = unsafe { &*job.f };
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(job.part))).is_err() {
            s.panicked.store(true, SeqCst);
        }
        s.done.store(seen, SeqCst);
    }
}

/// How many parts [`run`] can run at once (the caller plus the workers).
pub fn parallelism() -> usize {
    pool().slots.len() + 1
}

/// Runs `f(0)`, …, `f(parts − 1)` at once: part 0 on the calling thread, the others on the
/// workers; returns when all are done. Returns `false` without running anything when the workers
/// are busy with another caller or `parts` exceeds [`parallelism`].
pub fn run(parts: usize, f: &(dyn Fn(usize) + Sync)) -> bool {
    if parts <= 1 {
        if parts == 1 {
            f(0);
        }
        return true;
    }
    let p = pool();
    if parts > p.slots.len() + 1 {
        return false;
    }
    let Ok(_guard) = p.lock.try_lock() else {
        return false;
    };
    // SAFETY (lifetime): the workers only use `f` until they store `done`, and `Wait` below
    // blocks until every posted part stored it, also when part 0 panics.
    let fp: *const (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(f) };
    let workers = &p.slots[..parts - 1];
    let mut tickets = Vec::with_capacity(workers.len());
    for (i, s) in workers.iter().enumerate() {
        // SAFETY: this caller holds the lock and the worker finished its previous job (every
        // `run` waits for its jobs), so nobody reads `job` now.
        unsafe { *s.job.get() = Job { f: fp, part: i + 1 } };
        let t = s.posted.fetch_add(1, SeqCst) + 1;
        if s.parked.load(SeqCst) {
            if let Some(th) = s.thread.get() {
                th.unpark();
            }
        }
        tickets.push(t);
    }
    struct Wait<'a> {
        workers: &'a [Arc<Slot>],
        tickets: &'a [u64],
    }
    impl Drop for Wait<'_> {
        fn drop(&mut self) {
            for (s, &t) in self.workers.iter().zip(self.tickets) {
                while s.done.load(SeqCst) != t {
                    std::hint::spin_loop();
                }
            }
        }
    }
    let wait = Wait {
        workers,
        tickets: &tickets,
    };
    f(0);
    drop(wait);
    for s in workers {
        if s.panicked.swap(false, SeqCst) {
            panic!("a handoff worker panicked");
        }
    }
    true
}

/// An output buffer shared by the pieces of one split product (the parts of one [`run`]), each of
/// which writes its own range (the callers' SAFETY comments say why the ranges are disjoint).
pub(crate) struct SyncPtr<T>(*mut T, usize);
impl<T> Clone for SyncPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SyncPtr<T> {}
// SAFETY: only `slice` reads the pointer, under the disjointness contract above; the elements
// are plain numbers sent between threads.
unsafe impl<T: Send> Sync for SyncPtr<T> {}
unsafe impl<T: Send> Send for SyncPtr<T> {}
impl<T> SyncPtr<T> {
    pub(crate) fn new(y: &mut [T]) -> SyncPtr<T> {
        SyncPtr(y.as_mut_ptr(), y.len())
    }
    /// `y[start .. start + len]`.
    ///
    /// # Safety
    /// No other live reference may overlap the range, and `y` must outlive the slice.
    pub(crate) unsafe fn slice<'a>(self, start: usize, len: usize) -> &'a mut [T] {
        assert!(start + len <= self.1, "piece out of the output");
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Every part runs exactly once per call, over many calls (with parks in between), and from
    /// concurrent callers (which either get the workers or are told to split another way).
    #[test]
    fn every_part_runs_once() {
        let n = parallelism();
        for round in 0..2000 {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            // Other tests may hold the workers for a moment: retry until this call gets them.
            while !run(n, &|i| {
                hits[i].fetch_add(1, SeqCst);
            }) {
                std::thread::yield_now();
            }
            assert!(hits.iter().all(|h| h.load(SeqCst) == 1), "round {round}");
            if round % 500 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let total = AtomicUsize::new(0);
        std::thread::scope(|sc| {
            for _ in 0..4 {
                sc.spawn(|| {
                    for _ in 0..200 {
                        let local = AtomicUsize::new(0);
                        if !run(n, &|_| {
                            local.fetch_add(1, SeqCst);
                        }) {
                            (0..n).for_each(|_| {
                                local.fetch_add(1, SeqCst);
                            });
                        }
                        assert_eq!(local.load(SeqCst), n);
                        total.fetch_add(1, SeqCst);
                    }
                });
            }
        });
        assert_eq!(total.load(SeqCst), 800);
        assert!(!run(n + 1, &|_| {}));
    }
}
