//! Which steps the CUDA backend replays from a captured CUDA graph, and how such a step is
//! padded to its graph's shape. Host-side only, so it is unit-tested in CI without a GPU.
//!
//! A graph bakes in every launch's grid and every pointer, so a decode step is rounded up to
//! a (batch bucket, block-table width bucket) shape: extra rows are dummy sequences that
//! decode token 0 at position 0 into a padding KV block the engine never hands out, and the
//! width bucket fixes the block-table stride and the split-KV plan (the decode kernel reads
//! each row's real context length on the device, so a wider plan only adds empty splits).

use crate::backend::{BLOCK_SIZE, SeqChunk, StepBatch};
use crate::engine::sampler::{SampleSpec, SamplingConfig};

use super::cuda_plan::StepCapacity;

/// Narrowest block table a graph is captured for (512 tokens of context).
pub const MIN_TABLE_WIDTH: usize = 32;

/// The shape of one captured decode graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GraphKey {
    /// Rows (sequences = tokens = sampled rows) after padding.
    pub batch: usize,
    /// Block-table stride after padding.
    pub table_width: usize,
}

/// The padded batch size of `n` decode rows: 1, 2, 4, 8, then steps of 8 to 64, of 16 to
/// 256, of 32 beyond; `None` when that exceeds `limit` (the step buffers' rows).
pub fn batch_bucket(n: usize, limit: usize) -> Option<usize> {
    let b = match n {
        0 => return None,
        1..=8 => n.next_power_of_two(),
        9..=64 => n.next_multiple_of(8),
        65..=256 => n.next_multiple_of(16),
        _ => n.next_multiple_of(32),
    };
    (b <= limit).then_some(b)
}

/// The padded block-table width: a power of two of at least [`MIN_TABLE_WIDTH`], capped by
/// the buffers' width; `None` when even the cap is narrower than `width`.
pub fn width_bucket(width: usize, max_width: usize) -> Option<usize> {
    let w = width.max(MIN_TABLE_WIDTH).next_power_of_two().min(max_width);
    (w >= width.max(1)).then_some(w)
}

/// The graph a step can replay: only pure decode steps that sample every row in order.
pub fn graph_key(batch: &StepBatch, cap: &StepCapacity) -> Option<GraphKey> {
    let n = batch.seqs.len();
    let decode_only = batch.num_tokens() == n && batch.seqs.iter().all(|s| s.num_tokens == 1);
    let all_sampled = batch.samples.len() == n && batch.samples.iter().enumerate().all(|(i, s)| s.seq == i);
    if !decode_only || !all_sampled {
        return None;
    }
    let width = batch.seqs.iter().map(|s| s.block_table.len()).max().unwrap_or(1);
    Some(GraphKey {
        batch: batch_bucket(n, cap.max_seqs.min(cap.max_tokens))?,
        table_width: width_bucket(width, cap.max_blocks_per_seq())?,
    })
}

/// `batch` with dummy rows up to `key.batch`. Each dummy decodes token 0 at position 0 into
/// slot 0 of `pad_block` (a KV block outside the engine's pool), attends to that one key, and
/// is sampled greedily; its result is dropped.
pub fn pad_decode(batch: &StepBatch, key: GraphKey, pad_block: u32) -> StepBatch {
    let mut b = batch.clone();
    for i in batch.seqs.len()..key.batch {
        b.token_ids.push(0);
        b.positions.push(0);
        b.slot_mapping.push(pad_block * BLOCK_SIZE as u32);
        b.seqs.push(SeqChunk { token_start: i, num_tokens: 1, context_len: 1, block_table: vec![pad_block] });
        b.samples.push(SampleSpec {
            seq: i,
            config: SamplingConfig::greedy(),
            seed: 0,
            token_index: 0,
            penalties: Vec::new(),
            suppress: Vec::new(),
            top_logprobs: 0,
        });
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_batch(n: usize, blocks_each: usize) -> StepBatch {
        let mut b = StepBatch::default();
        for i in 0..n {
            let table: Vec<u32> = (0..blocks_each as u32).map(|j| (i * blocks_each) as u32 + j).collect();
            let ctx = blocks_each * BLOCK_SIZE - 3;
            b.token_ids.push(7);
            b.positions.push((ctx - 1) as u32);
            b.slot_mapping.push(table[(ctx - 1) / BLOCK_SIZE] * BLOCK_SIZE as u32 + ((ctx - 1) % BLOCK_SIZE) as u32);
            b.seqs.push(SeqChunk { token_start: i, num_tokens: 1, context_len: ctx, block_table: table });
            b.samples.push(SampleSpec {
                seq: i,
                config: SamplingConfig::default(),
                seed: 1,
                token_index: 3,
                penalties: Vec::new(),
                suppress: Vec::new(),
                top_logprobs: 0,
            });
        }
        b
    }

    const CAP: StepCapacity = StepCapacity { max_tokens: 512, max_seqs: 128, max_context: 8192 };

    #[test]
    fn batch_buckets_round_up_and_respect_the_limit() {
        let got: Vec<_> = [1, 2, 3, 5, 8, 9, 17, 64, 65, 100, 256, 257].iter().map(|n| batch_bucket(*n, 1024)).collect();
        let want = [1, 2, 4, 8, 8, 16, 24, 64, 80, 112, 256, 288].map(Some);
        assert_eq!(got, want);
        assert_eq!(batch_bucket(0, 64), None);
        assert_eq!(batch_bucket(60, 63), None, "a bucket beyond the buffers must not be used");
        // Every bucket covers its input and is never more than 1/8 + a power-of-two step over.
        for n in 1..=1000 {
            let b = batch_bucket(n, usize::MAX).unwrap_or(0);
            assert!(b >= n && b <= n.max(8) * 2, "{n} -> {b}");
        }
    }

    #[test]
    fn width_buckets_are_powers_of_two_within_the_cap() {
        assert_eq!(width_bucket(1, 512), Some(32));
        assert_eq!(width_bucket(33, 512), Some(64));
        assert_eq!(width_bucket(300, 512), Some(512));
        assert_eq!(width_bucket(300, 400), Some(400), "capped by the buffers, still covering");
        assert_eq!(width_bucket(401, 400), None);
        assert_eq!(width_bucket(5, 16), Some(16));
    }

    #[test]
    fn only_pure_decode_steps_that_sample_every_row_get_a_graph() {
        let b = decode_batch(3, 2);
        assert_eq!(graph_key(&b, &CAP), Some(GraphKey { batch: 4, table_width: 32 }));
        // A prefill chunk.
        let mut p = b.clone();
        p.seqs[2].num_tokens = 2;
        p.token_ids.push(1);
        assert_eq!(graph_key(&p, &CAP), None);
        // A row not sampled.
        let mut s = b.clone();
        s.samples.pop();
        assert_eq!(graph_key(&s, &CAP), None);
        // More rows than the buffers hold after rounding (97 -> 112 > 100), or just enough.
        let cap100 = StepCapacity { max_seqs: 100, ..CAP };
        assert_eq!(graph_key(&decode_batch(97, 1), &cap100), None);
        assert_eq!(graph_key(&decode_batch(90, 1), &cap100), Some(GraphKey { batch: 96, table_width: 32 }));
        // The token budget bounds the rows too.
        let few_tokens = StepCapacity { max_tokens: 4, ..CAP };
        assert_eq!(graph_key(&decode_batch(3, 1), &few_tokens), Some(GraphKey { batch: 4, table_width: 32 }));
        assert_eq!(graph_key(&decode_batch(5, 1), &few_tokens), None);
        // A context wider than the buffers' tables.
        assert_eq!(graph_key(&decode_batch(1, 600), &CAP), None);
    }

    #[test]
    fn padding_adds_valid_dummy_rows_on_the_padding_block_only() {
        let b = decode_batch(5, 3);
        let key = graph_key(&b, &CAP).unwrap_or(GraphKey { batch: 0, table_width: 0 });
        assert_eq!(key.batch, 8);
        let pad_block = 1000;
        let p = pad_decode(&b, key, pad_block);
        // The real rows are untouched.
        assert_eq!(&p.token_ids[..5], &b.token_ids[..]);
        assert_eq!(&p.seqs[..5], &b.seqs[..]);
        // The padded batch passes the engine's own invariants on a pool that includes the
        // padding block, and its dummies touch nothing but that block.
        assert!(p.validate(pad_block as usize + 1, 10).is_ok());
        assert_eq!((p.seqs.len(), p.samples.len(), p.num_tokens()), (8, 8, 8));
        for i in 5..8 {
            assert_eq!(p.seqs[i].block_table, vec![pad_block]);
            assert_eq!(p.slot_mapping[i], pad_block * BLOCK_SIZE as u32);
            assert_eq!(p.samples[i].seq, i);
        }
        // The real rows never reference the padding block.
        assert!(b.validate(pad_block as usize, 10).is_ok());
    }
}
