//! Counter layouts of the per-CPU stats arrays and the reason index of `REASON_STATS`.

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// `VIP_STATS[vip_id]`, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipStats {
    pub packets: u64,
    pub bytes: u64,
    /// Conntrack inserts (SYNs, first UDP datagrams, untracked mid-flow packets).
    pub new_flows: u64,
    pub conntrack_hits: u64,
    pub conntrack_misses: u64,
    /// Tracked flows whose backend was down and were re-picked through the ring.
    pub failovers: u64,
    /// Entries idle past the VIP's timeout: the packet was a new flow.
    pub expired: u64,
    /// Flow starts above the new-flow limit, forwarded by the ring without an entry (TCP is
    /// then tracked from its first non-SYN packet).
    pub deferred: u64,
}

/// Which `VipStats` counters after `bytes` a forwarded packet bumps, one bit each (in field
/// order: new_flows is bit 0 ... deferred bit 5), for a pick and whether the VIP tracks flows.
/// Computed with shifts and masks, not branches: a branch or an index on the pick makes the
/// verifier track its exact value and walk everything before the counters once per pick.
#[inline(always)]
pub fn counter_bits(pick: crate::decision::Pick, stateful: bool) -> u64 {
    // Per pick, in declaration order (Tracked, Ring, Failover, Expired, Deferred), a byte:
    // hits; misses and new; misses, new and failover; misses, new and expired; misses and
    // deferred.
    const BY_PICK: u64 = 0x02 | 0x05 << 8 | 0x0d << 16 | 0x15 << 24 | 0x24 << 32;
    // new_flows, hits and misses count only tracked flows.
    let keep = 0x38 | ((stateful as u64) * 0x07);
    (BY_PICK >> ((pick as u64) << 3)) & keep
}

/// Bit positions of `counter_bits`.
pub const BUMP_NEW: u32 = 0;
pub const BUMP_HIT: u32 = 1;
pub const BUMP_MISS: u32 = 2;
pub const BUMP_FAILOVER: u32 = 3;
pub const BUMP_EXPIRED: u32 = 4;
pub const BUMP_DEFERRED: u32 = 5;

/// `BACKEND_STATS[backend_id]`, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

/// Index of `REASON_STATS`: why a packet was passed to the kernel, dropped, or bounced.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Not IPv4/IPv6 (ARP, LLDP, ...).
    PassNotIp = 0,
    /// IP, but not addressed to a VIP.
    PassNotVip = 1,
    /// A fragment of a VIP address without a wildcard VIP to hash it on.
    PassFragment = 2,
    /// ICMP to a VIP that is not an error about a VIP flow (echo, unknown types).
    PassIcmp = 3,
    /// Neither TCP, UDP nor ICMP.
    PassProto = 4,
    /// Truncated or inconsistent headers.
    DropMalformed = 5,
    /// The VIP's ring is missing or empty.
    DropNoBackend = 6,
    /// Larger than the MTU after encapsulation and fragmentable: dropped.
    DropTooBig = 7,
    /// Larger than the MTU after encapsulation, DF set / IPv6: ICMP error sent to the client.
    TxTooBig = 8,
    /// bpf_xdp_adjust_head/tail failed.
    DropAdjust = 9,
    /// The ring named a backend id without a valid entry.
    DropBadBackend = 10,
    /// Redirect to a two-arm port failed.
    DropRedirect = 11,
    /// IPv6 extension header chain too long to walk.
    PassExtHeaders = 12,
    /// Fragments forwarded through a wildcard VIP on addresses only.
    FwdFragment = 13,
    /// ICMP errors forwarded to the backend owning the inner flow.
    FwdIcmp = 14,
    /// An ICMP/ICMPv6 echo request to a VIP address that answers ping, answered.
    TxEcho = 15,
}

pub const REASON_COUNT: u32 = 16;
/// Entries of `REASON_STATS`: room for reasons added later without a layout change.
pub const REASON_SLOTS: u32 = 32;

impl Reason {
    pub const ALL: [Reason; REASON_COUNT as usize] = [
        Reason::PassNotIp,
        Reason::PassNotVip,
        Reason::PassFragment,
        Reason::PassIcmp,
        Reason::PassProto,
        Reason::DropMalformed,
        Reason::DropNoBackend,
        Reason::DropTooBig,
        Reason::TxTooBig,
        Reason::DropAdjust,
        Reason::DropBadBackend,
        Reason::DropRedirect,
        Reason::PassExtHeaders,
        Reason::FwdFragment,
        Reason::FwdIcmp,
        Reason::TxEcho,
    ];

    /// Stable snake_case name for CLI output and metric labels.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::PassNotIp => "pass_not_ip",
            Reason::PassNotVip => "pass_not_vip",
            Reason::PassFragment => "pass_fragment",
            Reason::PassIcmp => "pass_icmp",
            Reason::PassProto => "pass_proto",
            Reason::DropMalformed => "drop_malformed",
            Reason::DropNoBackend => "drop_no_backend",
            Reason::DropTooBig => "drop_too_big",
            Reason::TxTooBig => "tx_too_big",
            Reason::DropAdjust => "drop_adjust",
            Reason::DropBadBackend => "drop_bad_backend",
            Reason::DropRedirect => "drop_redirect",
            Reason::PassExtHeaders => "pass_ext_headers",
            Reason::FwdFragment => "fwd_fragment",
            Reason::FwdIcmp => "fwd_icmp",
            Reason::TxEcho => "tx_echo",
        }
    }
}

/// Decap program counters (`DECAP_STATS` index).
pub const DECAP_OK: u32 = 0;
pub const DECAP_PASS: u32 = 1;
pub const DECAP_DROP: u32 = 2;
pub const DECAP_STATS_COUNT: u32 = 3;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::Pick;

    /// The bit table against the counters' definitions, spelled out.
    #[test]
    fn counter_bits_follow_the_counters_definitions() {
        for pick in [
            Pick::Tracked,
            Pick::Ring,
            Pick::Failover,
            Pick::Expired,
            Pick::Deferred,
        ] {
            for stateful in [false, true] {
                let want = [
                    (
                        BUMP_NEW,
                        stateful && pick != Pick::Tracked && pick != Pick::Deferred,
                    ),
                    (BUMP_HIT, stateful && pick == Pick::Tracked),
                    (BUMP_MISS, stateful && pick != Pick::Tracked),
                    (BUMP_FAILOVER, pick == Pick::Failover),
                    (BUMP_EXPIRED, pick == Pick::Expired),
                    (BUMP_DEFERRED, pick == Pick::Deferred),
                ]
                .iter()
                .fold(0u64, |b, &(bit, on)| b | (on as u64) << bit);
                assert_eq!(counter_bits(pick, stateful), want, "{pick:?} {stateful}");
            }
        }
    }
}
