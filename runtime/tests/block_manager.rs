//! The block manager: allocation, prefix reuse only of computed blocks,
//! reference counts, LRU eviction of cached blocks, and a property test
//! that blocks are never lost or shared wrongly.

use optc_runtime::block_manager::{BlockError, BlockManager};
use proptest::prelude::*;

#[test]
fn allocates_appends_and_frees() {
    let mut m = BlockManager::new(8, 4);
    assert_eq!(m.allocate(1, &[1, 2, 3, 4, 5, 6]).unwrap(), 0);
    assert_eq!(m.block_table(1).unwrap().len(), 2);
    assert_eq!(m.num_free_blocks(), 6);
    m.mark_computed(1, 6).unwrap();
    m.append(1, &[7, 8, 9]).unwrap(); // 9 tokens: a third block
    assert_eq!(m.block_table(1).unwrap().len(), 3);
    let slots = m.slots(1, 0..9).unwrap();
    let t = m.block_table(1).unwrap().to_vec();
    assert_eq!(slots[4], t[1].0 as usize * 4);
    assert_eq!(slots[8], t[2].0 as usize * 4);
    m.free(1).unwrap();
    assert_eq!(m.num_free_blocks(), 8);
    assert_eq!(m.free(1), Err(BlockError::UnknownSequence(1)));
}

#[test]
fn prefix_blocks_are_shared_once_computed() {
    let mut m = BlockManager::new(16, 4);
    let prompt: Vec<u32> = (0..14).collect(); // 3 full blocks + 2
    assert_eq!(m.allocate(1, &prompt).unwrap(), 0);
    // Not computed yet: nothing to share.
    assert_eq!(m.cached_prefix_len(&prompt), 0);
    m.mark_computed(1, 14).unwrap();
    let mut other = prompt[..12].to_vec();
    other.extend([99, 98, 97]);
    assert_eq!(m.allocate(2, &other).unwrap(), 12, "3 shared blocks");
    let (a, b) = (
        m.block_table(1).unwrap().to_vec(),
        m.block_table(2).unwrap().to_vec(),
    );
    assert_eq!(a[..3], b[..3]);
    assert_ne!(a[3], b[3]);
    assert_eq!(m.stats().hit_tokens, 12);
    // A prompt that is exactly the cached blocks still computes its last token.
    assert_eq!(m.cached_prefix_len(&prompt[..12]), 8);
    // Both finish: the shared blocks stay cached and come back for a third request.
    m.free(1).unwrap();
    m.free(2).unwrap();
    assert_eq!(m.allocate(3, &other).unwrap(), 12);
    assert!(m.stats().hit_rate() > 0.5);
}

#[test]
fn cached_blocks_are_evicted_least_recently_freed_first() {
    let mut m = BlockManager::new(4, 2);
    m.allocate(1, &[1, 2, 3]).unwrap();
    m.mark_computed(1, 3).unwrap();
    m.free(1).unwrap(); // block [1, 2] cached, one empty block
    m.allocate(2, &[5, 6, 7]).unwrap();
    m.mark_computed(2, 3).unwrap();
    m.free(2).unwrap(); // block [5, 6] cached too
                        // Needing all 4 blocks evicts both cached ones, the older first.
    m.allocate(3, &[9, 9, 9, 9, 9, 9, 9, 9]).unwrap();
    assert_eq!(m.stats().evictions, 2);
    assert_eq!(m.cached_prefix_len(&[1, 2, 3]), 0);
    assert_eq!(
        m.allocate(4, &[1]),
        Err(BlockError::OutOfBlocks { needed: 1, free: 0 })
    );
}

#[test]
fn failed_allocation_changes_nothing() {
    let mut m = BlockManager::new(3, 2);
    m.allocate(1, &[1, 2, 3, 4]).unwrap();
    let free = m.num_free_blocks();
    assert!(m.allocate(2, &[5, 6, 7, 8, 9]).is_err());
    assert_eq!(m.num_free_blocks(), free);
    assert!(m.block_table(2).is_none());
    assert!(m.append(1, &[5, 6, 7]).is_err());
    assert_eq!(m.block_table(1).unwrap().len(), 2);
}

proptest! {
    /// Random allocate/compute/append/free sequences: every block is either
    /// free or referenced, shared blocks hold the same tokens, and freeing
    /// everything returns every block.
    #[test]
    fn blocks_are_never_lost(ops in prop::collection::vec((0u8..4, 0u64..6, 1usize..12, 0u32..3), 1..80)) {
        let mut m = BlockManager::new(24, 4);
        let mut live: std::collections::BTreeMap<u64, Vec<u32>> = Default::default();
        for (kind, seq, len, flavour) in ops {
            match kind {
                0 if !live.contains_key(&seq) => {
                    let prompt: Vec<u32> = (0..len as u32).map(|i| i % 5 + flavour).collect();
                    if m.allocate(seq, &prompt).is_ok() {
                        live.insert(seq, prompt);
                    }
                }
                1 if live.contains_key(&seq) => {
                    let n = live[&seq].len();
                    m.mark_computed(seq, n).unwrap();
                }
                2 if live.contains_key(&seq) && m.append(seq, &[7]).is_ok() => {
                    live.get_mut(&seq).unwrap().push(7);
                }
                3 if live.contains_key(&seq) => {
                    m.free(seq).unwrap();
                    live.remove(&seq);
                }
                _ => {}
            }
            let used: usize = m.num_used_blocks();
            let mut distinct = std::collections::BTreeSet::new();
            for s in live.keys() {
                let t = m.block_table(*s).unwrap();
                prop_assert!(t.len() >= live[s].len().div_ceil(4));
                distinct.extend(t.iter().copied());
            }
            prop_assert_eq!(used, distinct.len());
            // A block two sequences share holds the same tokens in both.
            let seqs: Vec<u64> = live.keys().copied().collect();
            for (i, a) in seqs.iter().enumerate() {
                for b in &seqs[i + 1..] {
                    let (ta, tb) = (m.block_table(*a).unwrap(), m.block_table(*b).unwrap());
                    for (k, (x, y)) in ta.iter().zip(tb).enumerate() {
                        if x == y {
                            let end = ((k + 1) * 4).min(live[a].len()).min(live[b].len());
                            prop_assert_eq!(&live[a][..end], &live[b][..end], "block {} shared", k);
                        }
                    }
                }
            }
        }
        for s in live.keys().copied().collect::<Vec<_>>() {
            m.free(s).unwrap();
        }
        prop_assert_eq!(m.num_free_blocks(), 24);
    }
}
