//! How full conntrack is, and how many entries inserts pushed out. The kernel's LRU evicts
//! without telling anyone, so evictions are counted from the outside: every entry the forwarder
//! wrote (its `new_flows`, less the re-picks that rewrote an existing entry) either grew the
//! table or pushed an entry out. Entries are counted with a batch dump, every `EVERY` and more
//! often when the table may be near full.

use std::time::{Duration, Instant};

use lb_common::{FAMILY_V4, FlowKey, FlowState};

/// Count at least this often.
const EVERY: Duration = Duration::from_secs(10);
/// Count this often while the estimate is near capacity.
const NEAR_FULL_EVERY: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, Default)]
pub struct Occupancy {
    /// Entries at the last count, and the writes counter then.
    counted: Option<(u64, u64, Instant)>,
    /// IPv6 entries at the last count (a table of their own, sized on its own).
    counted_v6: u64,
    /// Writes since the start, as last seen.
    writes: u64,
    /// Entries pushed out by inserts since the daemon started.
    pub evictions: u64,
}

impl Occupancy {
    /// Entries now: the last count plus the writes since (an upper bound).
    pub fn estimate(&self) -> u64 {
        self.counted
            .map_or(0, |(n, w, _)| n + self.writes.saturating_sub(w))
    }

    /// Entries at the last count.
    pub fn entries(&self) -> u64 {
        self.counted.map_or(0, |(n, _, _)| n)
    }

    /// IPv6 entries at the last count (included in `entries`).
    pub fn entries_v6(&self) -> u64 {
        self.counted_v6
    }

    /// `writes`: entries the forwarder has written so far (a counter). `count` dumps the tables
    /// and gives (all entries, IPv6 entries); it is called only when a count is due.
    pub fn observe(
        &mut self,
        now: Instant,
        writes: u64,
        capacity: u64,
        count: impl FnOnce() -> Option<(u64, u64)>,
    ) {
        self.writes = writes;
        let due = match self.counted {
            None => true,
            Some((_, _, at)) => {
                let near_full = self.estimate() * 10 >= capacity * 9;
                let every = if near_full { NEAR_FULL_EVERY } else { EVERY };
                now.duration_since(at) >= every
            }
        };
        if !due {
            return;
        }
        let Some((n, v6)) = count() else { return };
        self.counted_v6 = v6;
        if let Some((before, w, _)) = self.counted {
            // Each write grew the table by one or replaced an evicted entry.
            let written = writes.saturating_sub(w);
            self.evictions += (before + written).saturating_sub(n);
        }
        self.counted = Some((n, writes, now));
    }
}

/// What `Occupancy::observe`'s count gives for a dump: (all entries, IPv6 entries).
pub fn tally(flows: &[(FlowKey, FlowState)]) -> (u64, u64) {
    let v6 = flows.iter().filter(|(k, _)| k.family != FAMILY_V4).count();
    (flows.len() as u64, v6 as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_that_did_not_grow_the_table_pushed_entries_out() {
        let t0 = Instant::now();
        let mut o = Occupancy::default();
        o.observe(t0, 0, 1000, || Some((0, 0)));
        // 400 writes, not yet due: the estimate grows, nothing is counted.
        o.observe(t0 + Duration::from_secs(1), 400, 1000, || panic!("not due"));
        assert_eq!(o.estimate(), 400);
        o.observe(t0 + Duration::from_secs(10), 400, 1000, || Some((400, 0)));
        assert_eq!((o.entries(), o.evictions), (400, 0));
        // 900 more writes into a 1000-entry table that holds 1000: 300 pushed out.
        o.observe(t0 + Duration::from_secs(11), 1300, 1000, || {
            panic!("not due")
        });
        o.observe(t0 + Duration::from_secs(12), 1300, 1000, || Some((1000, 0)));
        assert_eq!(o.evictions, 300);
    }

    #[test]
    fn near_capacity_the_table_is_counted_more_often() {
        let t0 = Instant::now();
        let mut o = Occupancy::default();
        o.observe(t0, 0, 100, || Some((95, 0)));
        let mut counted = false;
        o.observe(t0 + Duration::from_secs(2), 10, 100, || {
            counted = true;
            Some((100, 0))
        });
        assert!(counted, "near full: every 2 s");
        assert_eq!(o.evictions, 5);
    }
}
