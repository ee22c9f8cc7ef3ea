//! Debug aid: greedy continuation of raw token ids on the CPU backend, printing ids.
use hearth::backend::cpu::CpuBackend;
use hearth::backend::Backend;
use hearth::gguf::GgufFile;
use hearth::model::{Arch, KvCache, Model};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let f = GgufFile::open(&args[1])?;
    let ids: Vec<u32> = args[2].split(',').map(|s| s.parse().unwrap()).collect();
    let n: usize = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(16);
    let b = CpuBackend::new();
    let t0 = std::time::Instant::now();
    let spec = Arch::from_gguf(&f)?.spec(&f)?;
    let m = Model::load(&b, &f, spec)?;
    let mut cache = KvCache::new(&b, &m.config, 512)?;
    eprintln!("load {:?}", t0.elapsed());
    let t0 = std::time::Instant::now();
    let logits = m.forward(&b, &ids, &mut cache, 1)?;
    eprintln!("prefill {} in {:?}", ids.len(), t0.elapsed());
    let mut next = b.argmax(&logits)?[0];
    let mut out = vec![next];
    let t0 = std::time::Instant::now();
    for _ in 1..n {
        let logits = m.forward(&b, &[next], &mut cache, 1)?;
        next = b.argmax(&logits)?[0];
        out.push(next);
    }
    eprintln!("decode {} in {:?}", n - 1, t0.elapsed());
    println!("{out:?}");
    Ok(())
}
