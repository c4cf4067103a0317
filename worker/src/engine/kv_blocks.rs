//! The paged KV block manager with a prefix cache (DESIGN.md §5).
//!
//! Blocks are reference counted. A block whose KV is complete (all 16 tokens computed) is
//! registered under its chained hash; when its last reference goes it stays cached and
//! becomes *evictable* (LRU). Allocation takes a free block first, then evicts the least
//! recently released cached block. Every registration/eviction is recorded as a
//! `stored`/`removed` event with a monotonic id — the gateway routes on those.

use std::collections::{BTreeMap, HashMap, VecDeque};

/// A change of the prefix cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockEventKind {
    Stored(Vec<u64>),
    Removed(Vec<u64>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockEvent {
    pub id: u64,
    pub kind: BlockEventKind,
}

/// The block pool's bookkeeping (no KV data: backends own that).
#[derive(Debug)]
pub struct BlockManager {
    ref_count: Vec<u32>,
    hash_of: Vec<Option<u64>>,
    /// Registered hash → block.
    cached: HashMap<u64, u32>,
    /// Blocks with no references and no hash.
    free: VecDeque<u32>,
    /// Cached blocks with no references, by release tick (oldest first).
    evictable: BTreeMap<u64, u32>,
    /// Each evictable block's tick in `evictable`.
    evict_tick: Vec<u64>,
    tick: u64,
    next_event_id: u64,
    events: Vec<BlockEvent>,
    /// Prompt tokens looked up in / served from the cache (hit-rate statistics).
    pub lookup_tokens: u64,
    pub hit_tokens: u64,
}

impl BlockManager {
    pub fn new(num_blocks: usize) -> Self {
        BlockManager {
            ref_count: vec![0; num_blocks],
            hash_of: vec![None; num_blocks],
            cached: HashMap::new(),
            free: (0..num_blocks as u32).collect(),
            evictable: BTreeMap::new(),
            evict_tick: vec![0; num_blocks],
            tick: 0,
            next_event_id: 1,
            events: Vec::new(),
            lookup_tokens: 0,
            hit_tokens: 0,
        }
    }

    pub fn num_blocks(&self) -> usize {
        self.ref_count.len()
    }

    /// Blocks that can be handed out now (free + evictable cache).
    pub fn available(&self) -> usize {
        self.free.len() + self.evictable.len()
    }

    /// Blocks referenced by at least one sequence.
    pub fn in_use(&self) -> usize {
        self.num_blocks() - self.available()
    }

    /// Every cached hash (for a full snapshot).
    pub fn cached_hashes(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.cached.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Id of the last event emitted (0 = none yet).
    pub fn last_event_id(&self) -> u64 {
        self.next_event_id - 1
    }

    /// Takes the events recorded since the last call.
    pub fn take_events(&mut self) -> Vec<BlockEvent> {
        std::mem::take(&mut self.events)
    }

    fn emit(&mut self, kind: BlockEventKind) {
        let id = self.next_event_id;
        self.next_event_id += 1;
        self.events.push(BlockEvent { id, kind });
    }

    /// One new block with a single reference, or None when the pool is exhausted.
    pub fn allocate(&mut self) -> Option<u32> {
        if let Some(b) = self.free.pop_front() {
            self.ref_count[b as usize] = 1;
            return Some(b);
        }
        let (&tick, &b) = self.evictable.iter().next()?;
        self.evictable.remove(&tick);
        if let Some(h) = self.hash_of[b as usize].take() {
            self.cached.remove(&h);
            self.emit(BlockEventKind::Removed(vec![h]));
        }
        self.ref_count[b as usize] = 1;
        Some(b)
    }

    /// Allocates `n` blocks, all or nothing.
    pub fn allocate_n(&mut self, n: usize) -> Option<Vec<u32>> {
        if self.available() < n {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            match self.allocate() {
                Some(b) => out.push(b),
                None => {
                    self.release(&out);
                    return None;
                }
            }
        }
        Some(out)
    }

    /// The longest cached prefix of `hashes`: its blocks, each with one more reference.
    pub fn acquire_prefix(&mut self, hashes: &[u64]) -> Vec<u32> {
        let mut out = Vec::new();
        for h in hashes {
            let Some(&b) = self.cached.get(h) else { break };
            let rc = &mut self.ref_count[b as usize];
            if *rc == 0 {
                let t = self.evict_tick[b as usize];
                self.evictable.remove(&t);
            }
            *rc += 1;
            out.push(b);
        }
        out
    }

    /// Records a prefix lookup for the hit-rate statistics.
    pub fn record_lookup(&mut self, prompt_tokens: usize, hit_tokens: usize) {
        self.lookup_tokens += prompt_tokens as u64;
        self.hit_tokens += hit_tokens as u64;
    }

    /// Registers a block whose 16 tokens are now computed under `hash`. When another block
    /// already holds that hash, this one stays private (it is freed normally later).
    pub fn register(&mut self, block: u32, hash: u64) {
        if self.hash_of[block as usize].is_some() || self.cached.contains_key(&hash) {
            return;
        }
        self.hash_of[block as usize] = Some(hash);
        self.cached.insert(hash, block);
        self.emit(BlockEventKind::Stored(vec![hash]));
    }

    /// Drops one reference of each block. Cached blocks become evictable (most recently
    /// released last, and in reverse order within a table so the tail of a prefix goes
    /// before its head); others return to the free list.
    pub fn release(&mut self, blocks: &[u32]) {
        for &b in blocks.iter().rev() {
            let rc = &mut self.ref_count[b as usize];
            debug_assert!(*rc > 0, "double free of block {b}");
            if *rc == 0 {
                continue;
            }
            *rc -= 1;
            if *rc == 0 {
                if self.hash_of[b as usize].is_some() {
                    self.tick += 1;
                    self.evict_tick[b as usize] = self.tick;
                    self.evictable.insert(self.tick, b);
                } else {
                    self.free.push_back(b);
                }
            }
        }
    }

    /// References of a block (tests and invariants).
    pub fn ref_count(&self, block: u32) -> u32 {
        self.ref_count[block as usize]
    }

    /// Checks the pool's internal consistency; used by tests.
    pub fn check_invariants(&self) -> Result<(), String> {
        let n = self.num_blocks();
        let mut seen = vec![false; n];
        for &b in &self.free {
            if self.ref_count[b as usize] != 0 || self.hash_of[b as usize].is_some() || seen[b as usize] {
                return Err(format!("free block {b} is referenced, hashed or listed twice"));
            }
            seen[b as usize] = true;
        }
        for &b in self.evictable.values() {
            if self.ref_count[b as usize] != 0 || self.hash_of[b as usize].is_none() || seen[b as usize] {
                return Err(format!("evictable block {b} is referenced, unhashed or listed twice"));
            }
            seen[b as usize] = true;
        }
        for (b, s) in seen.iter().enumerate() {
            if !s && self.ref_count[b] == 0 {
                return Err(format!("block {b} has no reference and is on no list (leaked)"));
            }
        }
        for (h, &b) in &self.cached {
            if self.hash_of[b as usize] != Some(*h) {
                return Err(format!("cache maps {h:x} to block {b} which has another hash"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_blocks_are_reused_then_evicted_lru() {
        let mut m = BlockManager::new(3);
        let a = m.allocate_n(2).unwrap();
        m.register(a[0], 10);
        m.register(a[1], 11);
        m.release(&a);
        assert_eq!(m.available(), 3);
        // A new sequence with the same prefix gets both blocks back.
        let hit = m.acquire_prefix(&[10, 11, 12]);
        assert_eq!(hit, a);
        m.release(&hit);
        // Exhaust the pool: the free block first, then the LRU cached one (the tail, 11,
        // was released first).
        let b = m.allocate_n(2).unwrap();
        assert_eq!(b.len(), 2);
        let ev = m.take_events();
        assert_eq!(ev.last().unwrap().kind, BlockEventKind::Removed(vec![11]));
        assert!(ev.windows(2).all(|w| w[0].id + 1 == w[1].id));
        assert_eq!(m.acquire_prefix(&[10, 11]).len(), 1);
        m.check_invariants().unwrap();
    }

    #[test]
    fn allocation_is_all_or_nothing() {
        let mut m = BlockManager::new(2);
        assert!(m.allocate_n(3).is_none());
        assert_eq!(m.available(), 2);
        m.check_invariants().unwrap();
    }
}
