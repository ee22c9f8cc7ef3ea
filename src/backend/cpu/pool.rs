//! The CPU backend's worker pool: `run(n, f)` calls `f(0..n)` spread over the machine's cores
//! and returns when every call has finished. Decode runs a few hundred short parallel ops per
//! token with small sequential gaps between them; a pool whose idle workers sleep pays a wake-up
//! (and the kernel's scheduler) every time, which cost about a fifth of SmolLM2's decode with
//! rayon. So idle workers spin for a short while first and only then sleep, as llama.cpp's
//! threadpool does; between requests they sleep and use no CPU. A wait longer than a decode
//! step's usual gap yields the core at each check, so that beside a competing process the
//! thread being waited for gets it.
//!
//! **Invariant:** `run` does not return while any worker may still touch `f`: it waits for every
//! task to finish and for every worker to leave the job. A task that panics is counted as
//! finished and the panic is raised again in the caller.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps: longer than the gaps between the parallel
/// ops of a decode step, far shorter than the time between requests.
const SPIN: Duration = Duration::from_micros(500);

/// How long a waiting thread spins before it also yields its core at each check: longer than
/// a decode step's usual wait for the other threads, so those short waits never yield (on a
/// quiet machine a yield returns at once anyway); beside a competing process the thread it
/// waits for may be waiting for a core, and spinning there only takes that core from it.
const YIELD_AFTER: Duration = Duration::from_micros(50);

/// A thread's spinning wait. The clock is read once every 64 spins (read at every spin, the
/// clock calls were 2% of a decode step's samples, spent inside the waits); once the wait
/// passes `YIELD_AFTER`, each of those checks also yields the core.
struct Spin {
    start: Option<Instant>,
    spins: u32,
}

impl Spin {
    fn new() -> Self {
        Spin {
            start: None,
            spins: 0,
        }
    }

    /// One step of the wait; at each check, the time waited since the first.
    fn step(&mut self) -> Option<Duration> {
        std::hint::spin_loop();
        self.spins = self.spins.wrapping_add(1);
        if !self.spins.is_multiple_of(64) {
            return None;
        }
        let waited = self.start.get_or_insert_with(Instant::now).elapsed();
        if waited > YIELD_AFTER {
            std::thread::yield_now();
        }
        Some(waited)
    }
}

type Task<'a> = dyn Fn(usize) + Sync + 'a;

/// A published job. `f` is only dereferenced while `run` is blocked on the job (invariant).
#[derive(Clone, Copy)]
struct Job {
    f: *const Task<'static>,
    n: usize,
    gen: u64,
}

// SAFETY: `f` points to a `Sync` closure that outlives every use (see `Pool::run`).
unsafe impl Send for Job {}

#[derive(Default)]
struct State {
    job: Option<Job>,
    gen: u64,
    sleepers: usize,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// `state.gen`, readable without the lock by spinning workers.
    gen: AtomicU64,
    /// The next task index to hand out.
    next: AtomicUsize,
    finished: AtomicUsize,
    /// Workers between picking up a job and leaving it.
    inside: AtomicUsize,
    panicked: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the state itself stays consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims and runs tasks of `job` until none are left.
    fn work(&self, job: Job) {
        loop {
            let i = self.next.fetch_add(1, SeqCst);
            if i >= job.n {
                return;
            }
            // SAFETY: `run` keeps the closure alive until `finished` reaches `n` and no worker
            // is inside the job.
            let f = unsafe { &*job.f };
            if catch_unwind(AssertUnwindSafe(|| f(i))).is_err() {
                self.panicked.store(true, SeqCst);
            }
            self.finished.fetch_add(1, SeqCst);
        }
    }

    fn worker(&self) {
        let mut seen = 0u64;
        loop {
            let mut spin = Spin::new();
            while self.gen.load(SeqCst) == seen {
                if spin.step().is_some_and(|waited| waited > SPIN) {
                    let mut st = self.lock();
                    while st.gen == seen {
                        st.sleepers += 1;
                        st = self.wake.wait(st).unwrap_or_else(|e| e.into_inner());
                        st.sleepers -= 1;
                    }
                    break;
                }
            }
            self.inside.fetch_add(1, SeqCst);
            let (job, gen) = {
                let st = self.lock();
                (st.job, st.gen)
            };
            seen = gen;
            if let Some(job) = job.filter(|j| j.gen == gen) {
                self.work(job);
            }
            self.inside.fetch_sub(1, SeqCst);
        }
    }
}

/// More threads than this is a mistake in the request, not a machine.
const MAX_THREADS: usize = 1024;

pub struct Pool {
    shared: &'static Shared,
    n_workers: usize,
    n_threads_wanted: usize,
    /// One job at a time: jobs from several threads queue here.
    running: Mutex<()>,
}

impl Pool {
    /// The process-wide pool of one thread per core.
    pub fn global() -> &'static Pool {
        Self::with_threads(Self::default_threads())
    }

    /// One thread per core.
    pub fn default_threads() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    /// The process-wide pool of `n_threads` threads in all (the caller included), made on
    /// first use; its workers live as long as the process, so backends asking for the same
    /// count share them.
    pub fn with_threads(n_threads: usize) -> &'static Pool {
        static POOLS: OnceLock<Mutex<Vec<&'static Pool>>> = OnceLock::new();
        let n = n_threads.clamp(1, MAX_THREADS);
        let pools = POOLS.get_or_init(Default::default);
        // A poisoned lock only means a panic elsewhere while holding it; the list is intact.
        let mut pools = pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = pools.iter().find(|p| p.n_threads_wanted == n) {
            return p;
        }
        let pool: &'static Pool = Box::leak(Box::new(Pool::new(n)));
        pools.push(pool);
        pool
    }

    fn new(n_threads: usize) -> Pool {
        let shared: &'static Shared = Box::leak(Box::default());
        let mut n_workers = 0;
        for i in 1..n_threads {
            let spawned = std::thread::Builder::new()
                .name(format!("hearth-cpu-{i}"))
                .spawn(move || shared.worker());
            // Fewer workers is slower, not wrong: the caller runs whatever they do not.
            if spawned.is_ok() {
                n_workers += 1;
            }
        }
        Pool {
            shared,
            n_workers,
            n_threads_wanted: n_threads,
            running: Mutex::new(()),
        }
    }

    /// Threads that run tasks: the workers and the caller.
    pub fn n_threads(&self) -> usize {
        self.n_workers + 1
    }

    /// Calls `f(i)` for every `i` in `0..n`, in parallel, and returns when all have returned.
    /// Must not be called from inside a task.
    pub fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        if n <= 1 || self.n_workers == 0 {
            (0..n).for_each(f);
            return;
        }
        let _one_job = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let s = self.shared;
        s.next.store(0, SeqCst);
        s.finished.store(0, SeqCst);
        s.panicked.store(false, SeqCst);
        // SAFETY: only the lifetime is erased; this function does not return before the last
        // use of the pointer (it waits for `finished == n` and `inside == 0` below).
        let f_static: *const Task<'static> = unsafe { std::mem::transmute(f as *const Task<'_>) };
        let job = {
            let mut st = s.lock();
            st.gen += 1;
            let job = Job {
                f: f_static,
                n,
                gen: st.gen,
            };
            st.job = Some(job);
            s.gen.store(st.gen, SeqCst);
            if st.sleepers > 0 {
                s.wake.notify_all();
            }
            job
        };
        s.work(job);
        let mut spin = Spin::new();
        while s.finished.load(SeqCst) < n {
            spin.step();
        }
        s.lock().job = None;
        while s.inside.load(SeqCst) > 0 {
            spin.step();
        }
        if s.panicked.load(SeqCst) {
            panic!("a CPU backend task panicked");
        }
    }
}

/// A raw pointer that tasks writing disjoint parts of one buffer may share.
pub struct SyncPtr<T = f32>(pub *mut T);
// By hand: a derive would ask `T: Copy`, and only the pointer is copied.
impl<T> Clone for SyncPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SyncPtr<T> {}
// SAFETY: every task writes a disjoint set of indices (stated at each use).
unsafe impl<T> Send for SyncPtr<T> {}
unsafe impl<T> Sync for SyncPtr<T> {}

impl<T> SyncPtr<T> {
    /// Taking `self` makes closures capture the whole wrapper (which is `Sync`), not the raw
    /// pointer field.
    pub fn get(self) -> *mut T {
        self.0
    }
}

impl Pool {
    /// `f(i, piece)` for each `chunk`-long piece `i` of `data` (the last may be shorter), in
    /// parallel when `parallel`, else in order on this thread.
    pub fn for_each_chunk(
        &self,
        parallel: bool,
        data: &mut [f32],
        chunk: usize,
        f: &(dyn Fn(usize, &mut [f32]) + Sync),
    ) {
        let chunk = chunk.max(1);
        if !parallel {
            data.chunks_mut(chunk)
                .enumerate()
                .for_each(|(i, c)| f(i, c));
            return;
        }
        let (len, ptr) = (data.len(), SyncPtr(data.as_mut_ptr()));
        self.run(len.div_ceil(chunk), &|i| {
            let start = i * chunk;
            let end = (start + chunk).min(len);
            // SAFETY: piece `i` is `start..end` of `data`, disjoint from every other task's,
            // and `data` is borrowed mutably for the whole call.
            let piece =
                unsafe { std::slice::from_raw_parts_mut(ptr.get().add(start), end - start) };
            f(i, piece);
        });
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's scratch buffer of at least `len` values (contents undefined):
/// attention scores and dequantized weight tiles without an allocation per task.
pub fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < len {
            s.resize(len, 0.0);
        }
        f(&mut s[..len])
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_task_runs_once_across_many_jobs() {
        let pool = Pool::new(3);
        for n in [0, 1, 2, 7, 100, 1000] {
            let hits: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
            for _ in 0..50 {
                pool.run(n, &|i| {
                    hits[i].fetch_add(1, SeqCst);
                });
            }
            assert!(hits.iter().all(|h| h.load(SeqCst) == 50), "n={n}");
        }
    }

    #[test]
    fn sleeping_workers_wake_for_the_next_job() {
        let pool = Pool::new(2);
        std::thread::sleep(SPIN * 4);
        let sum = AtomicUsize::new(0);
        pool.run(64, &|i| {
            sum.fetch_add(i, SeqCst);
        });
        assert_eq!(sum.load(SeqCst), 64 * 63 / 2);
    }

    #[test]
    fn a_panicking_task_panics_the_caller_and_the_pool_goes_on() {
        let pool = Pool::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(16, &|i| assert!(i != 5, "task 5 fails"));
        }));
        assert!(r.is_err());
        let count = AtomicUsize::new(0);
        pool.run(16, &|_| {
            count.fetch_add(1, SeqCst);
        });
        assert_eq!(count.load(SeqCst), 16);
    }

    #[test]
    fn jobs_from_several_threads_queue() {
        let pool = Pool::new(2);
        let total = AtomicUsize::new(0);
        std::thread::scope(|sc| {
            for _ in 0..4 {
                sc.spawn(|| {
                    for _ in 0..100 {
                        pool.run(10, &|_| {
                            total.fetch_add(1, SeqCst);
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(SeqCst), 4 * 100 * 10);
    }
}
