//! The memory plan of a run: every intermediate value that a native kernel writes gets a
//! fixed offset in one arena, reused by values whose lifetimes do not overlap. A value
//! lives from the schedule position of the kernel that writes it to the last position
//! that reads it; the arena is as large as the densest packing found (greedy: largest
//! buffers first, each at the lowest offset free for its whole lifetime), which is at
//! least the peak of the bytes live at once.

/// Offsets are multiples of this many bytes (a cache line).
pub const ALIGN: usize = 64;

/// A value's lifetime (schedule positions, inclusive) and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Life {
    pub first: usize,
    pub last: usize,
    pub bytes: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemPlan {
    /// Byte offset of each value, in the order given.
    pub offsets: Vec<usize>,
    /// Bytes of the arena.
    pub arena_bytes: usize,
    /// Most bytes live at one schedule position (a lower bound of `arena_bytes`).
    pub peak_live_bytes: usize,
    /// Bytes of all values together (what no reuse would take).
    pub total_bytes: usize,
}

fn round_up(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

fn overlap(a: &Life, b: &Life) -> bool {
    a.first <= b.last && b.first <= a.last
}

/// Place every value in one arena.
pub fn plan(lives: &[Life]) -> MemPlan {
    let mut order: Vec<usize> = (0..lives.len()).collect();
    // Largest first; ties by birth then index, so the plan is deterministic.
    order.sort_by_key(|&i| (std::cmp::Reverse(lives[i].bytes), lives[i].first, i));
    let mut offsets = vec![0usize; lives.len()];
    let mut placed: Vec<usize> = Vec::new();
    let mut arena = 0;
    for i in order {
        let size = round_up(lives[i].bytes);
        // Busy ranges of the placed values alive at the same time, by offset.
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&j| overlap(&lives[i], &lives[j]))
            .map(|&j| (offsets[j], offsets[j] + round_up(lives[j].bytes)))
            .collect();
        busy.sort();
        let mut at = 0;
        for (lo, hi) in busy {
            if at + size <= lo {
                break;
            }
            at = at.max(hi);
        }
        offsets[i] = at;
        arena = arena.max(at + size);
        placed.push(i);
    }
    let end = lives.iter().map(|l| l.last + 1).max().unwrap_or(0);
    let peak_live_bytes = (0..end)
        .map(|t| {
            lives
                .iter()
                .filter(|l| l.first <= t && t <= l.last)
                .map(|l| round_up(l.bytes))
                .sum::<usize>()
        })
        .max()
        .unwrap_or(0);
    MemPlan {
        offsets,
        arena_bytes: arena,
        peak_live_bytes,
        total_bytes: lives.iter().map(|l| round_up(l.bytes)).sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn life(first: usize, last: usize, bytes: usize) -> Life {
        Life { first, last, bytes }
    }

    /// No two values alive at once share a byte; the arena is no smaller than the peak.
    fn check(lives: &[Life]) -> MemPlan {
        let p = plan(lives);
        for i in 0..lives.len() {
            for j in 0..i {
                if overlap(&lives[i], &lives[j]) {
                    let (a, b) = (p.offsets[i], p.offsets[j]);
                    let disjoint = a + lives[i].bytes <= b || b + lives[j].bytes <= a;
                    assert!(disjoint, "{i} and {j} overlap: {p:?}");
                }
            }
            assert_eq!(p.offsets[i] % ALIGN, 0);
            assert!(p.offsets[i] + lives[i].bytes <= p.arena_bytes);
        }
        assert!(p.arena_bytes >= p.peak_live_bytes);
        p
    }

    #[test]
    fn values_with_disjoint_lives_share_memory() {
        // A chain: each value read only by the next.
        let lives: Vec<Life> = (0..10).map(|i| life(i, i + 1, 4096)).collect();
        let p = check(&lives);
        assert_eq!(p.arena_bytes, 2 * 4096);
        assert_eq!(p.peak_live_bytes, 2 * 4096);
    }

    #[test]
    fn values_alive_together_do_not() {
        let lives = vec![
            life(0, 9, 1000),
            life(1, 5, 3000),
            life(2, 3, 100),
            life(6, 8, 3000),
        ];
        let p = check(&lives);
        assert_eq!(p.peak_live_bytes, 1024 + 3008 + 128);
        assert_eq!(p.arena_bytes, p.peak_live_bytes);
    }

    #[test]
    fn random_lifetimes_never_collide() {
        let mut s = 12345u64;
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) as usize
        };
        for _ in 0..200 {
            let lives: Vec<Life> = (0..next() % 30)
                .map(|_| {
                    let a = next() % 40;
                    life(a, a + next() % 10, 1 + next() % 5000)
                })
                .collect();
            check(&lives);
        }
    }
}
