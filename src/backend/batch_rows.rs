//! `BatchRows`: where each row of a batch sits, made on the host once per forward pass. A
//! batch holds rows of many sequences; each sequence's keys and values live in fixed-size
//! blocks of the layer caches, named by its block table (PagedAttention). Every index the
//! kernels follow is checked here, once, so the kernels index without bounds checks.

use crate::{Error, Result};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchRows {
    /// Position of each row in its sequence.
    pub pos: Vec<u32>,
    /// Sequence index of each row; rows of one sequence are consecutive, in position order.
    pub seq: Vec<u32>,
    /// Cache row that each row's key and value are written to.
    pub slot: Vec<u32>,
    /// Where each row's block table starts in `tables`.
    pub table_start: Vec<u32>,
    /// Every sequence's block table, concatenated: position `j` of row `t`'s sequence is
    /// cache row `tables[table_start[t] + j / block_size] * block_size + j % block_size`.
    pub tables: Vec<u32>,
    pub block_size: u32,
    /// One past the largest cache row any index above reaches.
    pub cache_rows_used: usize,
}

/// One sequence's part of a batch: its block table and the positions of its rows.
#[derive(Debug, Clone, Copy)]
pub struct SeqRows<'a> {
    pub table: &'a [u32],
    /// Position of the sequence's first row in this batch; its rows are consecutive.
    pub pos_start: usize,
    pub n_rows: usize,
}

impl BatchRows {
    /// Rows of several sequences, in the order given. Fails if a table does not cover every
    /// position up to a row's own, or an index does not fit the kernels' 32-bit indices.
    pub fn new(block_size: usize, seqs: &[SeqRows<'_>]) -> Result<Self> {
        let bad = |msg: String| Err(Error::shape("batch rows", msg));
        let bs = u32::try_from(block_size).ok().filter(|&b| b > 0);
        let Some(bs32) = bs else {
            return bad(format!("block size {block_size}"));
        };
        let mut r = BatchRows {
            block_size: bs32,
            ..Default::default()
        };
        for (s, seq) in seqs.iter().enumerate() {
            let end = seq.pos_start + seq.n_rows;
            if end.div_ceil(block_size) > seq.table.len() {
                return bad(format!(
                    "sequence {s}: positions ..{end} need {} blocks of {block_size}, its table has {}",
                    end.div_ceil(block_size),
                    seq.table.len()
                ));
            }
            let start = u32_of(r.tables.len())?;
            for &b in seq.table {
                let top = (b as usize + 1)
                    .checked_mul(block_size)
                    .ok_or_else(|| Error::shape("batch rows", format!("block {b} overflows")))?;
                r.cache_rows_used = r.cache_rows_used.max(top);
            }
            u32_of(r.cache_rows_used)?;
            r.tables.extend_from_slice(seq.table);
            for pos in seq.pos_start..end {
                r.pos.push(u32_of(pos)?);
                r.seq.push(u32_of(s)?);
                r.table_start.push(start);
                let block = seq.table[pos / block_size] as usize;
                r.slot.push(u32_of(block * block_size + pos % block_size)?);
            }
        }
        Ok(r)
    }

    /// One sequence at positions `pos_start..pos_start + n` whose cache rows are simply its
    /// positions (one block spanning the whole cache): tests and benchmarks of single ops.
    pub fn contiguous(pos_start: usize, n: usize) -> Result<Self> {
        let size = (pos_start + n).max(1);
        Self::new(
            size,
            &[SeqRows {
                table: &[0],
                pos_start,
                n_rows: n,
            }],
        )
    }

    pub fn n_rows(&self) -> usize {
        self.pos.len()
    }

    /// Cache row of position `j` of row `t`'s sequence (`j <= pos[t]`). Attention asks
    /// this for every key, so a power-of-two block size (the runtime's) divides by shifting.
    pub fn cache_row(&self, t: usize, j: usize) -> usize {
        let bs = self.block_size as usize;
        let start = self.table_start[t] as usize;
        if bs.is_power_of_two() {
            let shift = bs.trailing_zeros();
            ((self.tables[start + (j >> shift)] as usize) << shift) | (j & (bs - 1))
        } else {
            self.tables[start + j / bs] as usize * bs + j % bs
        }
    }

    /// Runs of consecutive rows of one sequence: `(first row, number of rows)`.
    pub fn segments(&self) -> Vec<(usize, usize)> {
        let mut out: Vec<(usize, usize)> = Vec::new();
        for (t, &s) in self.seq.iter().enumerate() {
            match out.last_mut() {
                Some((first, n)) if self.seq[*first] == s => *n += 1,
                _ => out.push((t, 1)),
            }
        }
        out
    }

    /// The words uploaded to a device: `pos`, `slot`, `table_start` (each `n_rows` long),
    /// then `tables`.
    pub fn device_words(&self) -> Vec<u32> {
        let mut w = Vec::with_capacity(3 * self.n_rows() + self.tables.len());
        w.extend_from_slice(&self.pos);
        w.extend_from_slice(&self.slot);
        w.extend_from_slice(&self.table_start);
        w.extend_from_slice(&self.tables);
        w
    }
}

fn u32_of(v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| {
        Error::shape(
            "batch rows",
            format!("{v} does not fit the kernels' 32-bit indices"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_follow_block_tables() {
        let r = BatchRows::new(
            4,
            &[
                SeqRows {
                    table: &[7, 2],
                    pos_start: 3,
                    n_rows: 2,
                },
                SeqRows {
                    table: &[5],
                    pos_start: 0,
                    n_rows: 1,
                },
            ],
        )
        .unwrap();
        assert_eq!(r.pos, [3, 4, 0]);
        assert_eq!(r.slot, [31, 8, 20]);
        assert_eq!(r.cache_row(1, 2), 30);
        assert_eq!(r.cache_row(2, 0), 20);
        assert_eq!(r.segments(), [(0, 2), (2, 1)]);
        assert_eq!(r.cache_rows_used, 32);
    }

    #[test]
    fn a_table_too_short_is_an_error() {
        let short = SeqRows {
            table: &[0],
            pos_start: 3,
            n_rows: 2,
        };
        assert!(BatchRows::new(4, &[short]).is_err());
        assert!(BatchRows::new(0, &[]).is_err());
    }
}
