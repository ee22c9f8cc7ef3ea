//! No heap allocation in the CPU backend's ops on the decode path (issue #9 part 4): a counting
//! global allocator — this binary's own, so no other test's allocations are counted — and a
//! backend that forwards every call to `CpuBackend`, counting what each op allocates while it
//! runs (the pool's workers run only inside an op, so every thread's allocations count).
//! Decode steps of the nano model run after warm-up; the ops that compute (embed, norm,
//! matmul and the fused ops before it, RoPE, cache write, attention, element-wise ops) must
//! allocate nothing per token.
//! Calls whose API returns a new value (`tensor`, `read`, `argmax`, `rows`) are counted too
//! and printed: they are the model's and runtime's part, not asserted here.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use hearth::backend::cpu::{CpuBackend, CpuCache, CpuTensor, CpuWeight};
use hearth::backend::ops::TensorOp;
use hearth::backend::{AttnParams, Backend, BatchRows, KvType, Prologue, RopeParams, WeightSource};
use hearth::gguf::GgufFile;
use hearth::model::{Arch, Model};
use hearth::options::GenerateOptions;
use hearth::runtime::{Runtime, Sequence};
use hearth::tokenizer::Tokenizer;
use hearth::Result;

struct Counting;

static ARMED: AtomicBool = AtomicBool::new(false);
static COUNT: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; counting touches only atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ARMED.load(SeqCst) {
            COUNT.fetch_add(1, SeqCst);
        }
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if ARMED.load(SeqCst) {
            COUNT.fetch_add(1, SeqCst);
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// `CpuBackend` with each call's allocations added to `counts[op]`.
struct Counted {
    inner: CpuBackend,
    counts: Mutex<BTreeMap<&'static str, usize>>,
}

impl Counted {
    fn count<R>(&self, op: &'static str, f: impl FnOnce() -> R) -> R {
        let before = COUNT.load(SeqCst);
        ARMED.store(true, SeqCst);
        let r = f();
        ARMED.store(false, SeqCst);
        let n = COUNT.load(SeqCst) - before;
        *self.counts.lock().unwrap().entry(op).or_default() += n;
        r
    }

    fn take(&self) -> BTreeMap<&'static str, usize> {
        std::mem::take(&mut *self.counts.lock().unwrap())
    }
}

impl Backend for Counted {
    type Tensor = CpuTensor;
    type Weight = CpuWeight;
    type Cache = CpuCache;
    type Rows = BatchRows;
    const UPLOADS_WEIGHTS: bool = CpuBackend::UPLOADS_WEIGHTS;
    const DECODE_MAX_ROWS: usize = CpuBackend::DECODE_MAX_ROWS;

    fn name(&self) -> String {
        self.inner.name()
    }
    fn load_weight(&self, src: &WeightSource) -> Result<CpuWeight> {
        self.inner.load_weight(src)
    }
    fn tensor(&self, n_rows: usize, n_cols: usize) -> Result<CpuTensor> {
        self.count("tensor", || self.inner.tensor(n_rows, n_cols))
    }
    fn shape(&self, t: &CpuTensor) -> (usize, usize) {
        self.inner.shape(t)
    }
    fn weight_shape(&self, w: &CpuWeight) -> (usize, usize) {
        self.inner.weight_shape(w)
    }
    fn write(&self, t: &mut CpuTensor, data: &[f32]) -> Result<()> {
        self.count("write", || self.inner.write(t, data))
    }
    fn read(&self, t: &CpuTensor) -> Result<Vec<f32>> {
        self.count("read", || self.inner.read(t))
    }
    fn copy_rows(
        &self,
        src: &CpuTensor,
        src_row: usize,
        dst: &mut CpuTensor,
        dst_row: usize,
        n: usize,
    ) -> Result<()> {
        self.count("copy_rows", || {
            self.inner.copy_rows(src, src_row, dst, dst_row, n)
        })
    }
    fn cache(&self, n_rows: usize, width: usize, ty: KvType) -> Result<CpuCache> {
        self.inner.cache(n_rows, width, ty)
    }
    fn cache_shape(&self, c: &CpuCache) -> (usize, usize) {
        self.inner.cache_shape(c)
    }
    fn rows(&self, rows: &BatchRows) -> Result<BatchRows> {
        self.count("rows", || self.inner.rows(rows))
    }
    fn rows_host<'a>(&self, rows: &'a BatchRows) -> &'a BatchRows {
        self.inner.rows_host(rows)
    }
    fn cache_write(&self, src: &CpuTensor, cache: &mut CpuCache, rows: &BatchRows) -> Result<()> {
        self.count("cache_write", || self.inner.cache_write(src, cache, rows))
    }
    fn cache_read(&self, c: &CpuCache) -> Result<Vec<f32>> {
        self.inner.cache_read(c)
    }
    fn cache_shift(
        &self,
        cache: &mut CpuCache,
        moves: &[(u32, u32)],
        rope: Option<(&CpuTensor, &RopeParams)>,
        delta: i32,
    ) -> Result<()> {
        self.count("cache_shift", || {
            self.inner.cache_shift(cache, moves, rope, delta)
        })
    }
    fn embed(&self, table: &CpuWeight, ids: &[u32], out: &mut CpuTensor) -> Result<()> {
        self.count("embed", || self.inner.embed(table, ids, out))
    }
    fn rms_norm(&self, x: &CpuTensor, w: &CpuWeight, eps: f32, out: &mut CpuTensor) -> Result<()> {
        self.count("rms_norm", || self.inner.rms_norm(x, w, eps, out))
    }
    fn matmul_rows(
        &self,
        x: &CpuTensor,
        ws: &[&CpuWeight],
        outs: &mut [&mut CpuTensor],
        n_single: usize,
    ) -> Result<()> {
        self.count("matmul", || self.inner.matmul_rows(x, ws, outs, n_single))
    }
    fn rope(
        &self,
        x: &mut CpuTensor,
        inv_freq: &CpuTensor,
        rows: &BatchRows,
        p: &RopeParams,
    ) -> Result<()> {
        self.count("rope", || self.inner.rope(x, inv_freq, rows, p))
    }
    fn matmul_from(
        &self,
        pro: Prologue<'_, Self>,
        into: &mut CpuTensor,
        ws: &[&CpuWeight],
        outs: &mut [&mut CpuTensor],
        n_single: usize,
    ) -> Result<()> {
        let pro: Prologue<'_, CpuBackend> = match pro {
            Prologue::Norm { x, w, eps } => Prologue::Norm { x, w, eps },
            Prologue::AddNorm { x, h, w, eps } => Prologue::AddNorm { x, h, w, eps },
            Prologue::Gated { gate, up, act } => Prologue::Gated { gate, up, act },
        };
        self.count("matmul_from", || {
            self.inner.matmul_from(pro, into, ws, outs, n_single)
        })
    }
    fn rope_write(
        &self,
        qkv: (&mut CpuTensor, &mut CpuTensor, &CpuTensor),
        inv_freq: &CpuTensor,
        rows: &BatchRows,
        p: &RopeParams,
        caches: (&mut CpuCache, &mut CpuCache),
        kv_rows: &BatchRows,
    ) -> Result<()> {
        self.count("rope_write", || {
            self.inner
                .rope_write(qkv, inv_freq, rows, p, caches, kv_rows)
        })
    }
    fn attention(
        &self,
        q: &CpuTensor,
        k: &CpuCache,
        v: &CpuCache,
        rows: &BatchRows,
        p: &AttnParams,
        out: &mut CpuTensor,
    ) -> Result<()> {
        self.count("attention", || self.inner.attention(q, k, v, rows, p, out))
    }
    fn argmax(&self, x: &CpuTensor) -> Result<Vec<u32>> {
        self.count("argmax", || self.inner.argmax(x))
    }
    fn apply(
        &self,
        op: &dyn TensorOp,
        w: Option<&CpuWeight>,
        ins: &[&CpuTensor],
        out: &mut CpuTensor,
    ) -> Result<()> {
        self.count("apply", || self.inner.apply(op, w, ins, out))
    }
}

/// Calls whose API hands back a new value; every other op must allocate nothing.
const RETURNS_NEW: [&str; 4] = ["tensor", "read", "argmax", "rows"];

/// Decode steps of `n_seqs` sequences side by side after warm-up: every op but those of
/// `RETURNS_NEW` allocates nothing.
fn check_decode_allocates_nothing(n_seqs: usize) {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/nano/nano-llama.gguf");
    let f = GgufFile::open(&path).unwrap();
    let spec = Arch::from_gguf(&f).unwrap().spec(&f).unwrap();
    // Two threads, so the pool's workers run (and would be counted) as in real decode.
    let backend = Counted {
        inner: CpuBackend::with_threads(2),
        counts: Mutex::new(BTreeMap::new()),
    };
    let model = Model::load(&backend, &f, spec).unwrap();
    let tok = Arc::new(Tokenizer::from_gguf(&f).unwrap());
    let backend = Arc::new(backend);
    let n_ctx = 256 * n_seqs;
    let mut rt = Runtime::new(backend.clone(), Arc::new(model), n_ctx, KvType::F16).unwrap();
    let mut opts = GenerateOptions::default();
    opts.set("temperature", "0").unwrap();
    opts.num_predict = Some(64);
    let mut seqs: Vec<Sequence> = (0..n_seqs as u32)
        .map(|i| Sequence::new(tok.clone(), vec![1, 5 + i, 9, 14, 3], &opts, 256).unwrap())
        .collect();
    let mut step = |rt: &mut Runtime<Counted>| {
        let mut batch: Vec<&mut Sequence> = seqs.iter_mut().collect();
        assert!(
            batch.iter().all(|s| s.done().is_none()),
            "a sequence ended early"
        );
        rt.step(&mut batch).unwrap();
    };
    // Warm-up: the prompts and a few decode steps grow every buffer to its decode size.
    for _ in 0..4 {
        step(&mut rt);
    }
    backend.take();
    let n_steps = 32;
    for _ in 0..n_steps {
        step(&mut rt);
    }
    let counts = backend.take();
    eprintln!("allocations over {n_steps} decode steps of {n_seqs} sequences, by op: {counts:?}");
    let (_api, ops): (Vec<_>, Vec<_>) = counts.iter().partition(|(op, _)| RETURNS_NEW.contains(op));
    for (op, n) in &ops {
        assert_eq!(
            **n, 0,
            "{op} allocated {n} times in {n_steps} decode steps of {n_seqs} sequences"
        );
    }
    assert!(
        ops.iter().any(|(op, _)| **op == "matmul") && ops.iter().any(|(op, _)| **op == "attention"),
        "the decode steps ran the ops this test is about: {counts:?}"
    );
}

/// One sequence, then eight side by side (the lane kernel: a server's batched step). One test,
/// not two: the allocator's count is the whole process's, and the test harness allocates
/// while it reports a test that ended beside one still running.
#[test]
fn cpu_decode_ops_allocate_nothing_per_token_after_warm_up() {
    check_decode_allocates_nothing(1);
    check_decode_allocates_nothing(8);
}
