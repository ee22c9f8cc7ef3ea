//! Embeddings: inputs run through the model as prompt rows (the same tiled kernels whatever
//! else is in the batch, so an input's vector does not depend on its neighbours), their final
//! hidden states (after the output norm) pooled as the GGUF says and L2-normalised. The KV
//! cache is borrowed block by block for the pass and released at once.

use crate::backend::{Backend, BatchRows, SeqRows};
use crate::gguf::GgufFile;
use crate::model::ForwardBatch;
use crate::{Error, Result};

use super::{AdapterSet, BlockTable, Runtime, BLOCK_SIZE};

/// How the token vectors of an input become one vector (`<arch>.pooling_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The average over every token (what a file that names none gets, as Ollama does).
    Mean,
    /// The first token's vector.
    Cls,
    /// The last token's vector.
    Last,
}

impl Pooling {
    /// llama.cpp's `llama_pooling_type`: 1 mean, 2 cls, 3 last; none (0) or missing means
    /// mean. Rank (4) is a reranker's head, which these models do not have.
    pub fn from_gguf(f: &GgufFile) -> Result<Pooling> {
        let arch = f.architecture()?;
        let key = format!("{arch}.pooling_type");
        match f.get(&key).map(|v| v.as_u64()) {
            None | Some(Some(0 | 1)) => Ok(Pooling::Mean),
            Some(Some(2)) => Ok(Pooling::Cls),
            Some(Some(3)) => Ok(Pooling::Last),
            Some(other) => Err(Error::Hyperparameter(format!(
                "{key} = {other:?} is not a pooling this engine has (mean, cls, last)"
            ))),
        }
    }
}

/// Inputs run together in one forward pass.
const GROUP: usize = 8;

impl<B: Backend> Runtime<B> {
    /// One L2-normalised vector per input (each non-empty and within the cache), pooled
    /// with `pooling`. Inputs go `GROUP` at a time, each read in prompt chunks.
    pub fn embed(&mut self, inputs: &[Vec<u32>], pooling: Pooling) -> Result<Vec<Vec<f32>>> {
        self.embed_with(AdapterSet::NONE, inputs, pooling)
    }

    /// `embed`, run with the LoRA set `adapter` (`add_lora_set`).
    pub fn embed_with(
        &mut self,
        adapter: AdapterSet,
        inputs: &[Vec<u32>],
        pooling: Pooling,
    ) -> Result<Vec<Vec<f32>>> {
        let d = self.model.config.n_embd;
        let mut out = Vec::with_capacity(inputs.len());
        // A cache with rings holds as many inputs at once as it has rings.
        let group_len = self.cache.ring().map_or(GROUP, |r| r.n_seqs.min(GROUP));
        for group in inputs.chunks(group_len) {
            let mut sums = vec![vec![0f64; d]; group.len()];
            self.run_hidden(adapter, group, &mut |i, pos, row| {
                let take = match pooling {
                    Pooling::Mean => true,
                    Pooling::Cls => pos == 0,
                    Pooling::Last => pos + 1 == group[i].len(),
                };
                if take {
                    sums[i]
                        .iter_mut()
                        .zip(row)
                        .for_each(|(s, &x)| *s += x as f64);
                }
            })?;
            out.extend(sums.into_iter().map(|s| normalize(&s)));
        }
        Ok(out)
    }

    /// Every token's final hidden state (after the output norm) for one input, computed in
    /// one forward pass (in prefill chunks when the windowed layers keep rings):
    /// `[tokens.len() * n_embd]`, row-major. A reference for `embed`.
    pub fn hidden_states(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let d = self.model.config.n_embd;
        let mut all = vec![0f32; tokens.len() * d];
        // One chunk, unless the windowed layers' rings bound it.
        let whole = match self.cache.ring() {
            Some(_) => self.prefill_chunk,
            None => usize::MAX,
        };
        let chunk = std::mem::replace(&mut self.prefill_chunk, whole);
        let result = self.run_hidden(
            AdapterSet::NONE,
            std::slice::from_ref(&tokens.to_vec()),
            &mut |_, pos, row| {
                all[pos * d..(pos + 1) * d].copy_from_slice(row);
            },
        );
        self.prefill_chunk = chunk;
        result.map(|()| all)
    }

    /// Runs `inputs` through the model together, a chunk of each per forward pass, handing
    /// each token's hidden state to `on_row(input, position, row)`.
    fn run_hidden(
        &mut self,
        adapter: AdapterSet,
        inputs: &[Vec<u32>],
        on_row: &mut dyn FnMut(usize, usize, &[f32]),
    ) -> Result<()> {
        if let Some(i) = inputs.iter().position(Vec::is_empty) {
            return Err(Error::Shape {
                op: "embed",
                msg: format!("input {i} has no tokens"),
            });
        }
        let mut tables: Vec<BlockTable> = inputs.iter().map(|_| BlockTable::default()).collect();
        let result = self.run_hidden_in(adapter, inputs, &mut tables, on_row);
        for t in tables {
            self.release_table(t);
        }
        result
    }

    fn run_hidden_in(
        &mut self,
        adapter: AdapterSet,
        inputs: &[Vec<u32>],
        tables: &mut [BlockTable],
        on_row: &mut dyn FnMut(usize, usize, &[f32]),
    ) -> Result<()> {
        let d = self.model.config.n_embd;
        for (input, table) in inputs.iter().zip(tables.iter_mut()) {
            self.reserve_table(table, input.len())?;
        }
        let mut done = vec![0usize; inputs.len()];
        while done.iter().zip(inputs).any(|(&n, t)| n < t.len()) {
            let mut tokens = Vec::new();
            let mut parts = Vec::new();
            for (i, input) in inputs.iter().enumerate() {
                let n = (input.len() - done[i]).min(self.prefill_chunk);
                if n > 0 {
                    tokens.extend_from_slice(&input[done[i]..done[i] + n]);
                    parts.push((i, done[i], n));
                }
            }
            let seq_rows: Vec<SeqRows<'_>> = parts
                .iter()
                .map(|&(i, pos_start, n_rows)| SeqRows {
                    table: &tables[i].blocks,
                    pos_start,
                    n_rows,
                })
                .collect();
            let rows = self.backend.rows(&BatchRows::new(BLOCK_SIZE, &seq_rows)?)?;
            let ring_seqs: Vec<_> = parts
                .iter()
                .zip(&seq_rows)
                .map(|(&(i, _, _), s)| (tables[i].ring.as_ref(), *s))
                .collect();
            let ring_rows = self.cache.ring_rows(&*self.backend, &ring_seqs)?;
            let all_rows: Vec<usize> = (0..tokens.len()).collect();
            let lora = super::row_lora(&self.lora_sets, [(adapter, tokens.len())].into_iter())?;
            let batch = ForwardBatch {
                tokens: &tokens,
                rows: &rows,
                // Every row is a prompt row: the tiled kernels, whatever the batch holds.
                n_single: 0,
                logit_rows: &all_rows,
                ring_rows: ring_rows.as_ref(),
                lora: &lora,
            };
            let hidden = self
                .model
                .forward_hidden(&self.backend, &batch, &mut self.cache)?;
            let hidden = self.backend.read(&hidden)?;
            let mut rows = hidden.chunks_exact(d);
            for &(i, start, n) in &parts {
                for pos in start..start + n {
                    if let Some(row) = rows.next() {
                        on_row(i, pos, row);
                    }
                }
                done[i] += n;
            }
        }
        Ok(())
    }
}

/// Tokens of KV cache `Runtime::embed` holds at once for `inputs`: its largest group's, in
/// whole blocks.
pub fn embed_cache_need(inputs: &[Vec<u32>]) -> usize {
    inputs
        .chunks(GROUP)
        .map(|g| {
            g.iter()
                .map(|t| t.len().div_ceil(BLOCK_SIZE) * BLOCK_SIZE)
                .sum::<usize>()
        })
        .max()
        .unwrap_or(0)
}

/// `v / |v|` in f32 (the zero vector stays zero).
fn normalize(v: &[f64]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
    v.iter().map(|x| (x * scale) as f32).collect()
}
