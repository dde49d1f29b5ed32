//! The paged KV cache's block manager.
//!
//! The cache is `num_blocks` fixed-size blocks of `block_size` token slots.
//! A sequence owns a block table (its blocks in order). Full blocks are
//! identified by a hash of their token ids chained with the previous block's
//! hash, so two sequences with the same prefix share those blocks (reference
//! counted). A block whose last user finished keeps its contents and its
//! hash on the free list, so a later request with the same prefix can take
//! it back; free blocks are reused least-recently-freed first, uncached ones
//! before cached ones (LRU eviction of the prefix cache).

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

/// A block index into the KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId(pub u32);

/// A request's identity.
pub type SeqId = u64;

/// Hashes a [`SeqId`] with one multiply (Fibonacci hashing): the maps
/// keyed by request are looked up several times per sequence per step,
/// and SipHash's resistance to chosen keys buys nothing for ids the
/// engine hands out.
#[derive(Clone, Copy, Default)]
pub struct SeqIdHasher(u64);

impl std::hash::Hasher for SeqIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A map keyed by request, with [`SeqIdHasher`].
pub type SeqMap<V> = HashMap<SeqId, V, std::hash::BuildHasherDefault<SeqIdHasher>>;

/// The identity of a full block's contents: its tokens and everything before.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockHash(u64);

impl BlockHash {
    /// Chains `parent` with this block's token ids.
    pub fn of(parent: Option<BlockHash>, tokens: &[u32]) -> BlockHash {
        let mut h = DefaultHasher::new();
        parent.map(|p| p.0).hash(&mut h);
        tokens.hash(&mut h);
        BlockHash(h.finish())
    }
}

/// Why a request cannot get the blocks it needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("the KV cache needs {needed} free blocks but has {free}")]
    OutOfBlocks { needed: usize, free: usize },
    #[error("sequence {0} has no blocks")]
    UnknownSequence(SeqId),
    #[error("sequence {0} already has blocks")]
    AlreadyAllocated(SeqId),
    #[error("sequence {seq}: token {pos} is computed or not appended")]
    NotPending { seq: SeqId, pos: usize },
}

/// Counters for reports and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CacheStats {
    /// Prompt tokens looked up in the prefix cache.
    pub queried_tokens: u64,
    /// Of those, how many were found (their KV need not be computed).
    pub hit_tokens: u64,
    /// Cached blocks dropped to make room.
    pub evictions: u64,
}

impl CacheStats {
    pub fn hit_rate(&self) -> f64 {
        if self.queried_tokens == 0 {
            0.0
        } else {
            self.hit_tokens as f64 / self.queried_tokens as f64
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Block {
    refs: u32,
    /// Set once the block is full: its contents' identity, and the tokens
    /// themselves (a hash collision must never share wrong data).
    hash: Option<(BlockHash, Vec<u32>)>,
    /// Position in the free list, when free.
    free_key: Option<i64>,
}

/// A sequence's blocks, its tokens, and how many of them have their KV
/// written (only those blocks may be shared).
#[derive(Clone, Debug, Default)]
struct Table {
    blocks: Vec<BlockId>,
    tokens: Vec<u32>,
    computed: usize,
    /// The chained hash of each full computed block so far, so a step
    /// hashes only the blocks it fills (not the whole prefix again).
    hashes: Vec<BlockHash>,
}

/// Allocates KV-cache blocks to sequences, sharing full blocks by prefix.
pub struct BlockManager {
    block_size: usize,
    blocks: Vec<Block>,
    /// Free blocks by reuse order: smallest key is reused first.
    free: BTreeMap<i64, BlockId>,
    front: i64,
    back: i64,
    cached: HashMap<BlockHash, BlockId>,
    tables: SeqMap<Table>,
    stats: CacheStats,
}

impl BlockManager {
    pub fn new(num_blocks: usize, block_size: usize) -> BlockManager {
        assert!(block_size > 0, "block size must be positive");
        let mut m = BlockManager {
            block_size,
            blocks: vec![Block::default(); num_blocks],
            free: BTreeMap::new(),
            front: 0,
            back: 0,
            cached: HashMap::new(),
            tables: SeqMap::default(),
            stats: CacheStats::default(),
        };
        for i in 0..num_blocks {
            m.release_block(BlockId(i as u32));
        }
        m
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    pub fn num_free_blocks(&self) -> usize {
        self.free.len()
    }

    pub fn num_used_blocks(&self) -> usize {
        self.blocks.len() - self.free.len()
    }

    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// The block table of a sequence.
    pub fn block_table(&self, seq: SeqId) -> Option<&[BlockId]> {
        self.tables.get(&seq).map(|t| t.blocks.as_slice())
    }

    /// Puts a block whose last user left on the free list: cached blocks at
    /// the back (kept as long as possible), empty ones at the front.
    fn release_block(&mut self, b: BlockId) {
        let blk = &mut self.blocks[b.0 as usize];
        let key = if blk.hash.is_some() {
            self.back += 1;
            self.back
        } else {
            self.front -= 1;
            self.front
        };
        blk.free_key = Some(key);
        self.free.insert(key, b);
    }

    /// Takes a block off the free list (it may be cached and about to be reused).
    fn claim(&mut self, b: BlockId) {
        let blk = &mut self.blocks[b.0 as usize];
        if let Some(k) = blk.free_key.take() {
            self.free.remove(&k);
        }
        blk.refs += 1;
    }

    /// A fresh block for new contents, evicting the least recently freed
    /// cached block if no empty one is left.
    fn fresh(&mut self) -> Option<BlockId> {
        let (&k, &b) = self.free.iter().next()?;
        self.free.remove(&k);
        let blk = &mut self.blocks[b.0 as usize];
        blk.free_key = None;
        if let Some((h, _)) = blk.hash.take() {
            self.cached.remove(&h);
            self.stats.evictions += 1;
        }
        blk.refs = 1;
        Some(b)
    }

    /// The cached block holding exactly these tokens after `parent`, if any.
    fn lookup(&self, h: BlockHash, tokens: &[u32]) -> Option<BlockId> {
        let b = *self.cached.get(&h)?;
        match &self.blocks[b.0 as usize].hash {
            Some((hh, t)) if *hh == h && t.as_slice() == tokens => Some(b),
            _ => None,
        }
    }

    /// How many leading tokens of `tokens` a new sequence would find cached
    /// (whole blocks, and never the last token: its logits must be computed).
    pub fn cached_prefix_len(&self, tokens: &[u32]) -> usize {
        let mut parent = None;
        let mut n = 0;
        for chunk in tokens.chunks(self.block_size) {
            if chunk.len() < self.block_size || n + chunk.len() >= tokens.len() {
                break;
            }
            let h = BlockHash::of(parent, chunk);
            if self.lookup(h, chunk).is_none() {
                break;
            }
            parent = Some(h);
            n += chunk.len();
        }
        n
    }

    /// Blocks a sequence of `len` tokens needs.
    pub fn blocks_for(&self, len: usize) -> usize {
        len.div_ceil(self.block_size)
    }

    /// Gives a new sequence blocks for its prompt, reusing cached full
    /// blocks of its prefix. Returns how many prompt tokens are already in
    /// the cache (their KV need not be computed). On failure nothing changes.
    pub fn allocate(&mut self, seq: SeqId, tokens: &[u32]) -> Result<usize, BlockError> {
        if self.tables.contains_key(&seq) {
            return Err(BlockError::AlreadyAllocated(seq));
        }
        let hit = self.cached_prefix_len(tokens);
        let hit_blocks = hit / self.block_size;
        let total = self.blocks_for(tokens.len()).max(1);
        // Cached hits that sit on the free list also come out of it.
        let mut parent = None;
        let mut reuse = Vec::with_capacity(hit_blocks);
        let mut hashes = Vec::with_capacity(hit_blocks);
        for chunk in tokens.chunks(self.block_size).take(hit_blocks) {
            let h = BlockHash::of(parent, chunk);
            reuse.push(self.lookup(h, chunk).expect("counted by cached_prefix_len"));
            hashes.push(h);
            parent = Some(h);
        }
        let free_hits = reuse
            .iter()
            .filter(|b| self.blocks[b.0 as usize].refs == 0)
            .count();
        let needed = total - hit_blocks;
        if needed + free_hits > self.free.len() {
            return Err(BlockError::OutOfBlocks {
                needed: needed + free_hits,
                free: self.free.len(),
            });
        }
        for &b in &reuse {
            self.claim(b);
        }
        let mut table = Table {
            blocks: reuse,
            tokens: tokens.to_vec(),
            computed: hit,
            hashes,
        };
        for _ in 0..needed {
            table.blocks.push(self.fresh().expect("checked above"));
        }
        self.stats.queried_tokens += tokens.len() as u64;
        self.stats.hit_tokens += hit as u64;
        self.tables.insert(seq, table);
        Ok(hit)
    }

    /// How many tokens a sequence has slots for.
    pub fn num_tokens(&self, seq: SeqId) -> Option<usize> {
        self.tables.get(&seq).map(|t| t.tokens.len())
    }

    /// How many of a sequence's tokens have their KV written.
    pub fn computed(&self, seq: SeqId) -> Option<usize> {
        self.tables.get(&seq).map(|t| t.computed)
    }

    /// Marks `n` more of a sequence's tokens as written to the cache (after
    /// the step that computed them ran), registering blocks that became full
    /// in the prefix cache. Blocks are shared only once their KV exists.
    pub fn mark_computed(&mut self, seq: SeqId, n: usize) -> Result<(), BlockError> {
        let bs = self.block_size;
        let t = self
            .tables
            .get_mut(&seq)
            .ok_or(BlockError::UnknownSequence(seq))?;
        t.computed = (t.computed + n).min(t.tokens.len());
        let full_after = t.computed / bs;
        let mut newly = Vec::new();
        for i in t.hashes.len()..full_after {
            let chunk = &t.tokens[i * bs..(i + 1) * bs];
            let h = BlockHash::of(t.hashes.last().copied(), chunk);
            t.hashes.push(h);
            newly.push((t.blocks[i], h, chunk.to_vec()));
        }
        for (b, h, toks) in newly {
            let blk = &mut self.blocks[b.0 as usize];
            if blk.hash.is_none() && !self.cached.contains_key(&h) {
                blk.hash = Some((h, toks));
                self.cached.insert(h, b);
            }
        }
        Ok(())
    }

    /// Makes room for `new` more tokens of a running sequence (e.g. the
    /// token a decode step produced, whose KV the next step writes). On
    /// failure nothing changes: the caller preempts someone and retries.
    pub fn append(&mut self, seq: SeqId, new: &[u32]) -> Result<(), BlockError> {
        let t = self.tables.get(&seq).ok_or(BlockError::UnknownSequence(seq))?;
        let need = self.blocks_for(t.tokens.len() + new.len());
        let extra = need.saturating_sub(t.blocks.len());
        if extra > self.free.len() {
            return Err(BlockError::OutOfBlocks {
                needed: extra,
                free: self.free.len(),
            });
        }
        for _ in 0..extra {
            let b = self.fresh().expect("checked above");
            self.tables.get_mut(&seq).expect("checked").blocks.push(b);
        }
        self.tables
            .get_mut(&seq)
            .expect("checked")
            .tokens
            .extend_from_slice(new);
        Ok(())
    }

    /// Replaces the token at `pos`, one not yet computed: a step planned
    /// before the token before it was known (asynchronous scheduling)
    /// appended a placeholder there. Out of range or computed: an error.
    pub fn set_token(&mut self, seq: SeqId, pos: usize, token: u32) -> Result<(), BlockError> {
        let t = self
            .tables
            .get_mut(&seq)
            .ok_or(BlockError::UnknownSequence(seq))?;
        if pos < t.computed || pos >= t.tokens.len() {
            return Err(BlockError::NotPending { seq, pos });
        }
        t.tokens[pos] = token;
        Ok(())
    }

    /// Releases a finished or preempted sequence's blocks. Full blocks stay
    /// cached until their space is needed.
    pub fn free(&mut self, seq: SeqId) -> Result<(), BlockError> {
        let t = self.tables.remove(&seq).ok_or(BlockError::UnknownSequence(seq))?;
        // Later blocks first, so a prefix's head outlives its tail on the free list.
        for &b in t.blocks.iter().rev() {
            let blk = &mut self.blocks[b.0 as usize];
            blk.refs -= 1;
            if blk.refs == 0 {
                self.release_block(b);
            }
        }
        Ok(())
    }

    /// The cache slot (block * block_size + offset) of each of a sequence's
    /// tokens in `range`.
    pub fn slots(&self, seq: SeqId, range: std::ops::Range<usize>) -> Result<Vec<usize>, BlockError> {
        let t = self.tables.get(&seq).ok_or(BlockError::UnknownSequence(seq))?;
        Ok(range
            .map(|p| t.blocks[p / self.block_size].0 as usize * self.block_size + p % self.block_size)
            .collect())
    }
}
