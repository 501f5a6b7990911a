//! Weighted Maglev table builder (Eisenbud et al., NSDI'16, with Envoy-style weighting).
//!
//! The table is a pure function of (set of backends with weights, ring size, seed): backends are
//! sorted by identity before filling, so insertion order never matters and two LB instances with the
//! same configuration build the same table byte for byte. A backend's permutation comes from
//! `jhash2` of its identity (family + address words) under two seeds.
//!
//! Weighting: in round `r` a backend of weight `w` may claim a slot while
//! `claimed * max_weight < r * w`, so slot counts track weights as exact ratios. Weight 0 claims
//! nothing (drain).

use alloc::{collections::BinaryHeap, vec::Vec};
use core::cmp::Reverse;

use crate::{hash::jhash2, types::Addr};

/// Entry of an empty table slot (no backend). Backend ids start at 1.
pub const EMPTY: u32 = 0;

const SEED_OFFSET: u32 = 0x6d61_676c; // "magl"
const SEED_SKIP: u32 = 0x6576_6c21; // "evl!"

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevBackend {
    /// Identity of the backend: what the permutation is derived from.
    pub family: u8,
    pub addr: Addr,
    pub weight: u32,
    /// The value written into the table for this backend.
    pub id: u32,
}

#[derive(Debug, PartialEq, Eq)]
pub enum MaglevError {
    /// Ring sizes must be prime so every skip walks the whole ring.
    NotPrime(u32),
    /// Two backends share one identity.
    Duplicate(Addr),
    /// Fewer slots than backends with non-zero weight.
    TooSmall { ring_size: u32, backends: usize },
}

impl core::fmt::Display for MaglevError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MaglevError::NotPrime(m) => write!(f, "ring size {m} is not prime"),
            MaglevError::Duplicate(a) => write!(f, "duplicate backend address {a:?}"),
            MaglevError::TooSmall {
                ring_size,
                backends,
            } => {
                write!(
                    f,
                    "ring size {ring_size} is smaller than the {backends} weighted backends"
                )
            }
        }
    }
}

impl std::error::Error for MaglevError {}

pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let n = n as u64;
    let mut d = 2u64;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// The largest prime not above `n` (ring sizes offered to operators).
pub fn prime_at_most(n: u32) -> u32 {
    (2..=n).rev().find(|&m| is_prime(m)).unwrap_or(2)
}

fn permutation(b: &MaglevBackend, ring_size: u32, seed: u32) -> (u32, u32) {
    let words = [
        b.family as u32,
        b.addr.0[0],
        b.addr.0[1],
        b.addr.0[2],
        b.addr.0[3],
    ];
    let offset = jhash2(&words, seed ^ SEED_OFFSET) % ring_size;
    let skip = jhash2(&words, seed ^ SEED_SKIP) % (ring_size - 1) + 1;
    (offset, skip)
}

/// Build the table. Returns `ring_size` entries, each a backend `id` (or `EMPTY` when no backend
/// has a non-zero weight).
pub fn build(
    backends: &[MaglevBackend],
    ring_size: u32,
    seed: u32,
) -> Result<Vec<u32>, MaglevError> {
    if !is_prime(ring_size) {
        return Err(MaglevError::NotPrime(ring_size));
    }
    let mut sorted: Vec<MaglevBackend> = backends.to_vec();
    sorted.sort_by_key(|b| (b.family, b.addr));
    if let Some(w) = sorted
        .windows(2)
        .find(|w| (w[0].family, w[0].addr) == (w[1].family, w[1].addr))
    {
        return Err(MaglevError::Duplicate(w[0].addr));
    }
    sorted.retain(|b| b.weight > 0);
    let m = ring_size as usize;
    let mut table = alloc::vec![EMPTY; m];
    if sorted.is_empty() {
        return Ok(table);
    }
    if sorted.len() > m {
        return Err(MaglevError::TooSmall {
            ring_size,
            backends: sorted.len(),
        });
    }

    struct Cursor {
        next: u32,
        skip: u32,
        claimed: u64,
        weight: u64,
        id: u32,
    }
    let mut cursors: Vec<Cursor> = sorted
        .iter()
        .map(|b| {
            let (offset, skip) = permutation(b, ring_size, seed);
            Cursor {
                next: offset,
                skip,
                claimed: 0,
                weight: b.weight as u64,
                id: b.id,
            }
        })
        .collect();
    let max_weight = cursors.iter().map(|c| c.weight).max().unwrap_or(1);
    // Round by round, in sorted order, every backend that may claim (`claimed * max_weight <
    // round * weight`) claims one slot. Visiting only those (a heap keyed by the next round each
    // may claim in, then its position) gives the same table without a pass over every backend in
    // every round: the work no longer grows with the ratio of the largest weight to the others.
    let mut due: BinaryHeap<Reverse<(u64, usize)>> =
        (0..cursors.len()).map(|i| Reverse((1, i))).collect();
    let mut filled = 0usize;
    while filled < m {
        // The heaviest backend is always due in the next round, so the heap never empties.
        let Some(Reverse((round, i))) = due.pop() else {
            break;
        };
        let c = &mut cursors[i];
        loop {
            let slot = c.next as usize;
            c.next += c.skip;
            if c.next >= ring_size {
                c.next -= ring_size;
            }
            if table[slot] == EMPTY {
                table[slot] = c.id;
                c.claimed += 1;
                filled += 1;
                break;
            }
        }
        // One slot per round at most; then the first round its weight entitles it to another.
        let next = (round + 1).max(c.claimed * max_weight / c.weight + 1);
        due.push(Reverse((next, i)));
    }
    Ok(table)
}

/// Slots whose entry differs between two tables of equal size: the delta to write.
pub fn changed_slots(old: &[u32], new: &[u32]) -> Vec<(u32, u32)> {
    new.iter()
        .enumerate()
        .filter(|&(i, &n)| old.get(i) != Some(&n))
        .map(|(i, &n)| (i as u32, n))
        .collect()
}
