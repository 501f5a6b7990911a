//! Replay protection per peer: a datagram is accepted once, within a freshness window of the
//! sender's clock, from the sender's newest boot. Boot ids start with the boot's wall-clock
//! time, so an earlier run's datagrams are older boots and refused.

/// How far a sender's clock may be from ours (NTP keeps fleets well within it).
pub const FRESH_MS: u64 = 30_000;
/// Sequence numbers accepted out of order behind the highest one seen.
const WINDOW: u64 = 64;

#[derive(Clone, Debug, Default)]
pub struct Window {
    boot: u64,
    top: u64,
    /// Bit i: `top - 1 - i` was seen.
    seen: u64,
}

/// A boot id: the start time in ms in the high bits, 16 random bits below.
pub fn boot_id(unix_ms: u64, random: u16) -> u64 {
    (unix_ms << 16) | u64::from(random)
}

impl Window {
    /// Accept (and remember) a datagram, or say why not: `"stale"` or `"replayed"`.
    pub fn accept(
        &mut self,
        boot: u64,
        seq: u64,
        sent_ms: u64,
        now_ms: u64,
    ) -> Result<(), &'static str> {
        if sent_ms.abs_diff(now_ms) > FRESH_MS {
            return Err("stale");
        }
        if boot < self.boot {
            return Err("replayed");
        }
        if boot > self.boot {
            *self = Window {
                boot,
                top: seq,
                seen: 0,
            };
            return Ok(());
        }
        if seq > self.top {
            let shift = seq - self.top;
            self.seen = if shift > WINDOW {
                0
            } else {
                // The old top becomes bit shift - 1.
                (self.seen << shift) | (1 << (shift - 1))
            };
            self.top = seq;
            return Ok(());
        }
        if seq == self.top || self.top - seq > WINDOW {
            return Err("replayed");
        }
        let bit = 1u64 << (self.top - seq - 1);
        if self.seen & bit != 0 {
            return Err("replayed");
        }
        self.seen |= bit;
        Ok(())
    }

    /// The peer's current boot and the highest sequence seen from it (what we acknowledge).
    pub fn ack(&self) -> (u64, u64) {
        (self.boot, self.top)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_datagram_is_accepted_once_in_any_order_within_the_window() {
        let mut w = Window::default();
        let b = boot_id(1_000, 7);
        assert_eq!(w.accept(b, 1, 1_000, 1_000), Ok(()));
        assert_eq!(w.accept(b, 3, 1_000, 1_000), Ok(()));
        assert_eq!(w.accept(b, 2, 1_000, 1_000), Ok(()), "late but new");
        for seq in [1, 2, 3] {
            assert_eq!(w.accept(b, seq, 1_000, 1_000), Err("replayed"), "{seq}");
        }
        assert_eq!(w.accept(b, 200, 1_000, 1_000), Ok(()));
        assert_eq!(
            w.accept(b, 100, 1_000, 1_000),
            Err("replayed"),
            "behind the window"
        );
        assert_eq!(w.accept(b, 199, 1_000, 1_000), Ok(()));
        assert_eq!(w.ack(), (b, 200));
    }

    #[test]
    fn old_clocks_and_earlier_boots_are_refused_a_restart_is_not() {
        let mut w = Window::default();
        let first = boot_id(1_000, 9);
        assert_eq!(w.accept(first, 5, 1_000, 1_000), Ok(()));
        assert_eq!(
            w.accept(first, 6, 1_000, 1_000 + FRESH_MS + 1),
            Err("stale")
        );
        let restarted = boot_id(2_000, 1);
        assert_eq!(
            w.accept(restarted, 1, 2_000, 2_000),
            Ok(()),
            "seq starts again"
        );
        assert_eq!(w.accept(first, 7, 2_000, 2_000), Err("replayed"));
        assert_eq!(w.ack(), (restarted, 1));
    }
}
