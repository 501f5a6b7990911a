//! Packet capture from the forwarder (`xlb capture`, `xlb replay`): the filter the daemon writes,
//! the header of every record the XDP program puts on the capture ring, and the filter logic
//! itself, shared so the host tests check what the kernel runs.

use crate::{
    consts::CFG_F_CAPTURE,
    stats::{REASON_COUNT, Reason},
    types::{Addr, FlowKey, LbConfig},
};

/// Capture index of a plain forward (no `Reason` is counted for it). Reasons keep their own
/// value (`Reason as u32`), so one bit mask selects forwards, passes and drops alike.
pub const CAPTURE_FORWARD: u32 = REASON_COUNT;
/// Outcomes a capture can select: every reason plus the plain forward.
pub const CAPTURE_OUTCOMES: u32 = REASON_COUNT + 1;
/// `CaptureConfig::reasons` that selects everything.
pub const CAPTURE_ALL_OUTCOMES: u32 = (1 << CAPTURE_OUTCOMES) - 1;
/// `CaptureConfig::vip_id` / `CaptureHeader::vip_id`: any VIP, or no VIP known.
pub const CAPTURE_NO_VIP: u32 = u32::MAX;

/// Frame bytes a record can carry at most; longer frames are truncated (the header keeps the
/// real length, as pcap does). A power of two: the kernel side bounds lengths with a mask.
pub const CAPTURE_SNAPLEN_MAX: u32 = 2048;
/// `CaptureConfig::flags`: record frames as the program leaves them (encapsulated, rewritten)
/// instead of as they arrived.
pub const CAPTURE_F_OUTPUT: u8 = 1 << 0;
/// Capture ring size in bytes (a power-of-two number of pages).
pub const CAPTURE_RING_BYTES: u32 = 4 << 20;

/// Index 0 of `CAPTURE`: what to record while `CFG_F_CAPTURE` is set. Written by the daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureConfig {
    /// Backend address to match (with `backend_family`).
    pub backend: Addr,
    /// Stamped on every record so a reader skips leftovers of an earlier capture.
    pub session: u32,
    /// VIP id to match, or `CAPTURE_NO_VIP` for any.
    pub vip_id: u32,
    /// Bit `1 << outcome` selects that outcome (`Reason as u32` or `CAPTURE_FORWARD`).
    pub outcomes: u32,
    /// Record one matching packet in `sample` on average (0 and 1: every one).
    pub sample: u32,
    /// Frame bytes to keep (clamped to `CAPTURE_SNAPLEN_MAX`).
    pub snaplen: u32,
    /// `FAMILY_*` of `backend`; 0: any backend (and packets without one).
    pub backend_family: u8,
    /// `CAPTURE_F_*`.
    pub flags: u8,
    pub _pad: [u8; 2],
}

/// Header of every record on the capture ring, followed by `caplen` frame bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureHeader {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) when the verdict was made.
    pub ktime_ns: u64,
    /// The flow as parsed (zero when the frame did not parse).
    pub key: FlowKey,
    /// Backend address (zero without a backend).
    pub backend: Addr,
    pub session: u32,
    /// Length of the frame as it left the program (after encapsulation).
    pub len: u32,
    /// Frame bytes that follow this header.
    pub caplen: u32,
    /// XDP action returned.
    pub action: u32,
    /// `Reason as u32`, or `CAPTURE_FORWARD`.
    pub outcome: u32,
    pub vip_id: u32,
    /// 0: no backend chosen.
    pub backend_id: u32,
    pub ifindex: u32,
    pub rx_queue: u32,
    pub cpu: u32,
    /// Whether `key` holds a parsed flow.
    pub parsed: u8,
    pub backend_family: u8,
    /// `CAPTURE_F_OUTPUT` if the bytes are the frame as sent, else as received.
    pub flags: u8,
    pub _pad: [u8; 5],
}

/// A record as it is assembled, per CPU, before it is copied to the ring at its exact size.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CaptureScratch {
    pub hdr: CaptureHeader,
    pub data: [u8; CAPTURE_SNAPLEN_MAX as usize],
}

/// Per-CPU counters of the capture path (`CAPTURE_STATS[0]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureCounters {
    /// Packets that matched the filter and the sampling.
    pub matched: u64,
    /// Of those, records lost because the ring was full.
    pub lost: u64,
}

const _: () = {
    assert!(core::mem::size_of::<CaptureConfig>() == 40);
    assert!(core::mem::size_of::<CaptureHeader>() == 112);
    assert!(core::mem::size_of::<CaptureHeader>().is_multiple_of(8));
    assert!(core::mem::size_of::<CaptureCounters>() == 16);
    assert!(CAPTURE_OUTCOMES <= 32);
    assert!(CAPTURE_SNAPLEN_MAX.is_power_of_two());
};

/// The outcome a capture files a packet under.
#[inline(always)]
pub const fn outcome(reason: Option<Reason>) -> u32 {
    match reason {
        Some(r) => r as u32,
        None => CAPTURE_FORWARD,
    }
}

/// Snake_case name of an outcome, for the CLI (`forward` or the reason's name).
pub fn outcome_name(outcome: u32) -> &'static str {
    Reason::ALL
        .iter()
        .find(|r| **r as u32 == outcome)
        .map_or("forward", |r| r.name())
}

impl CaptureConfig {
    /// Whether capture is on at all: the only cost the forwarder pays when it is off.
    ///
    /// A volatile load each time it is asked: were the flags kept in a register from the first
    /// test to the second, the verifier would carry "on" and "off" as distinct states through
    /// the whole forwarder between them and verify it twice.
    #[inline(always)]
    pub fn enabled(cfg: &LbConfig) -> bool {
        // SAFETY: a plain read of a field of a live reference.
        unsafe { core::ptr::addr_of!(cfg.flags).read_volatile() & CFG_F_CAPTURE != 0 }
    }

    /// Whether a packet with this outcome, VIP and backend passes the filter (before sampling).
    #[inline(always)]
    pub fn matches(&self, outcome: u32, vip_id: u32, backend: Option<(&Addr, u8)>) -> bool {
        if outcome >= CAPTURE_OUTCOMES || self.outcomes & (1 << outcome) == 0 {
            return false;
        }
        if self.vip_id != CAPTURE_NO_VIP && self.vip_id != vip_id {
            return false;
        }
        if self.backend_family != 0 {
            return match backend {
                Some((addr, family)) => family == self.backend_family && *addr == self.backend,
                None => false,
            };
        }
        true
    }

    /// Frame bytes to record of a `len`-byte frame.
    #[inline(always)]
    pub fn caplen(&self, len: u32) -> u32 {
        let snap = if self.snaplen == 0 || self.snaplen > CAPTURE_SNAPLEN_MAX {
            CAPTURE_SNAPLEN_MAX
        } else {
            self.snaplen
        };
        if len < snap { len } else { snap }
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: repr(C), Copy, integers only, no padding (sizes asserted above).
    unsafe impl aya::Pod for CaptureConfig {}
    unsafe impl aya::Pod for CaptureHeader {}
    unsafe impl aya::Pod for CaptureCounters {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consts::{FAMILY_V4, FAMILY_V6};

    fn filter() -> CaptureConfig {
        CaptureConfig {
            vip_id: CAPTURE_NO_VIP,
            outcomes: CAPTURE_ALL_OUTCOMES,
            ..Default::default()
        }
    }

    #[test]
    fn an_open_filter_takes_every_outcome_and_nothing_beyond() {
        let f = filter();
        for o in 0..CAPTURE_OUTCOMES {
            assert!(f.matches(o, 3, None), "outcome {o}");
        }
        assert!(!f.matches(CAPTURE_OUTCOMES, 3, None));
        assert!(!f.matches(u32::MAX, 3, None));
    }

    #[test]
    fn filters_select_by_outcome_vip_and_backend() {
        let b = Addr::v4(0x0202_000a);
        let other = Addr::v4(0x0302_000a);
        let f = CaptureConfig {
            outcomes: 1 << Reason::DropNoBackend as u32,
            ..filter()
        };
        assert!(f.matches(Reason::DropNoBackend as u32, 1, None));
        assert!(!f.matches(CAPTURE_FORWARD, 1, Some((&b, FAMILY_V4))));

        let f = CaptureConfig {
            vip_id: 7,
            ..filter()
        };
        assert!(f.matches(CAPTURE_FORWARD, 7, None));
        assert!(!f.matches(CAPTURE_FORWARD, 8, None));
        assert!(!f.matches(Reason::PassNotVip as u32, CAPTURE_NO_VIP, None));

        let f = CaptureConfig {
            backend: b,
            backend_family: FAMILY_V4,
            ..filter()
        };
        assert!(f.matches(CAPTURE_FORWARD, 1, Some((&b, FAMILY_V4))));
        assert!(!f.matches(CAPTURE_FORWARD, 1, Some((&other, FAMILY_V4))));
        assert!(!f.matches(CAPTURE_FORWARD, 1, Some((&b, FAMILY_V6))));
        assert!(!f.matches(Reason::DropNoBackend as u32, 1, None));
    }

    #[test]
    fn caplen_is_bounded_by_snaplen_and_the_record_size() {
        let mut f = filter();
        assert_eq!(f.caplen(60), 60);
        assert_eq!(f.caplen(9000), CAPTURE_SNAPLEN_MAX);
        f.snaplen = 96;
        assert_eq!(f.caplen(60), 60);
        assert_eq!(f.caplen(1500), 96);
        f.snaplen = 1 << 20;
        assert_eq!(f.caplen(9000), CAPTURE_SNAPLEN_MAX);
    }

    #[test]
    fn outcomes_have_names() {
        assert_eq!(outcome_name(CAPTURE_FORWARD), "forward");
        assert_eq!(
            outcome_name(Reason::DropNoBackend as u32),
            "drop_no_backend"
        );
        assert_eq!(outcome(None), CAPTURE_FORWARD);
        assert_eq!(outcome(Some(Reason::PassNotVip)), Reason::PassNotVip as u32);
    }
}
