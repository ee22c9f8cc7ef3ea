//! Debug aid: prints the first values of a dequantized tensor.
use hearth::gguf::GgufFile;
fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let f = GgufFile::open(&a[1])?;
    for t in f.tensors() {
        let mut v = vec![0f32; t.n_elements() as usize];
        t.qtype.dequantize_row(&f.tensor_bytes(t), &mut v);
        let s: f64 = v.iter().map(|x| *x as f64).sum();
        println!(
            "{} {} {:?} sum={:.6} first={:?}",
            t.name,
            t.qtype,
            t.dims,
            s,
            &v[..4]
        );
    }
    Ok(())
}
