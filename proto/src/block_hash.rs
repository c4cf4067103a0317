//! Chained hashes of full KV blocks (DESIGN.md §5).
//!
//! A block's hash is xxh3-64 over (parent hash as u64 little-endian ‖ the block's token
//! ids as u32 little-endian); the first block's parent is the model's `block_hash_seed`
//! (xxh3-64 of the model content hash). Chaining makes a hash identify the whole prefix up
//! to and including its block, so equal hashes mean equal KV.

use xxhash_rust::xxh3::xxh3_64;

/// Tokens per KV block, fixed across the project.
pub const BLOCK_SIZE: usize = 16;

/// The parent hash of a model's first block: xxh3-64 of its content hash string.
pub fn seed_for_model(content_hash: &str) -> u64 {
    xxh3_64(content_hash.as_bytes())
}

/// Hash of one full block given its parent's hash.
pub fn chain(parent: u64, block_tokens: &[u32]) -> u64 {
    let mut buf = Vec::with_capacity(8 + 4 * block_tokens.len());
    buf.extend_from_slice(&parent.to_le_bytes());
    for t in block_tokens {
        buf.extend_from_slice(&t.to_le_bytes());
    }
    xxh3_64(&buf)
}

/// Hashes of every *full* block of `tokens` (a trailing partial block has none).
pub fn full_block_hashes(seed: u64, tokens: &[u32]) -> Vec<u64> {
    let mut out = Vec::with_capacity(tokens.len() / BLOCK_SIZE);
    let mut parent = seed;
    for block in tokens.chunks_exact(BLOCK_SIZE) {
        parent = chain(parent, block);
        out.push(parent);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_full_blocks_are_hashed_and_chaining_depends_on_prefix() {
        let seed = seed_for_model("abc");
        let a: Vec<u32> = (0..40).collect();
        let h = full_block_hashes(seed, &a);
        assert_eq!(h.len(), 2);
        // Same second block after a different first block hashes differently.
        let mut b = a.clone();
        b[0] = 999;
        let hb = full_block_hashes(seed, &b);
        assert_ne!(h[0], hb[0]);
        assert_ne!(h[1], hb[1]);
        // Same tokens under another model seed differ too.
        assert_ne!(full_block_hashes(seed_for_model("xyz"), &a)[0], h[0]);
        // The chain is the documented byte layout.
        let mut bytes = seed.to_le_bytes().to_vec();
        for t in 0u32..16 {
            bytes.extend_from_slice(&t.to_le_bytes());
        }
        assert_eq!(h[0], xxh3_64(&bytes));
    }
}
