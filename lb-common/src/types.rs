//! Map keys and values. All `#[repr(C)]`, padding-free (asserted below), integers only.
//! Addresses and ports stay in network byte order exactly as they appear on the wire.

use crate::consts::{FAMILY_V4, FAMILY_V6};

/// An IPv4 or IPv6 address as four words in wire order; IPv4 uses word 0, the rest are zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Addr(pub [u32; 4]);

impl Addr {
    #[inline(always)]
    pub const fn v4(word: u32) -> Self {
        Addr([word, 0, 0, 0])
    }
    /// Build from wire-order bytes (4 or 16 of them).
    pub fn from_bytes(b: &[u8]) -> Self {
        let mut a = [0u32; 4];
        for (i, w) in b.chunks_exact(4).take(4).enumerate() {
            a[i] = u32::from_ne_bytes([w[0], w[1], w[2], w[3]]);
        }
        Addr(a)
    }
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        for (i, w) in self.0.iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        out
    }
}

/// Key of the `VIPS` hash map. `port_be == 0` is the all-ports wildcard of an address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipKey {
    pub addr: Addr,
    pub port_be: u16,
    pub proto: u8,
    pub family: u8,
}

impl VipKey {
    /// The key of `flow`'s VIP at `port_be` (0: the address's wildcard), written as five
    /// 32-bit words: the kernel hashes it in 32-bit loads, and a load that spans several
    /// narrower stores (port, protocol, family) is not forwarded from them.
    #[inline(always)]
    pub const fn of_flow(flow: &FlowKey, port_be: u16) -> Self {
        let a = flow.dst.0;
        let tail = port_be as u32 | (flow.proto as u32) << 16 | (flow.family as u32) << 24;
        #[cfg(target_endian = "little")]
        {
            // SAFETY: VipKey is 20 bytes of integers without padding, laid out as these
            // words little-endian.
            unsafe { core::mem::transmute::<[u32; 5], VipKey>([a[0], a[1], a[2], a[3], tail]) }
        }
        #[cfg(target_endian = "big")]
        {
            let _ = tail;
            VipKey {
                addr: Addr(a),
                port_be,
                proto: flow.proto,
                family: flow.family,
            }
        }
    }
}

/// Value of the `VIPS` map: how to forward this VIP's packets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipMeta {
    /// Index into `RINGS` and `VIP_STATS`.
    pub vip_id: u32,
    /// Size of this VIP's ring (entries of the inner array).
    pub ring_size: u32,
    /// `HASH_*`.
    pub hash_mode: u8,
    /// `FWD_*`.
    pub fwd_mode: u8,
    /// `VIP_F_*`.
    pub flags: u16,
    /// Seconds a tracked flow may be idle before its next packet is a new flow (0: never).
    pub idle_timeout_s: u32,
}

/// Value of the `VIP_BY_ID` array: a published VIP found by its id. A tracked flow's backend
/// names its VIP id (`Backend::vip`), so an established packet reaches its VIP through this array
/// (a bounds check and a load) instead of a second hash lookup. All zero: no VIP has the id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipSlot {
    pub key: VipKey,
    pub meta: VipMeta,
}

impl VipSlot {
    /// Whether the VIP of `key` gets a slot: port VIPs and wildcards do, the echo entries of
    /// addresses that answer ping (ICMP keys) do not.
    #[inline(always)]
    pub fn carries(key: &VipKey) -> bool {
        key.proto == crate::consts::PROTO_TCP || key.proto == crate::consts::PROTO_UDP
    }

    /// Whether a flow addressed by `key` belongs to this VIP (its port, or any port for a
    /// wildcard). An empty slot holds nothing: family 0 is no family.
    #[inline(always)]
    pub fn holds(&self, key: &FlowKey) -> bool {
        self.key.family == key.family
            && self.key.proto == key.proto
            && self.key.addr == key.dst
            && (self.key.port_be == key.dst_port_be || self.key.port_be == 0)
    }
}

/// Value of the `BACKENDS` array, indexed by backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr: Addr,
    /// Next hop's MAC for encapsulated modes, the backend's own MAC for L2 DSR.
    pub dst_mac: [u8; 6],
    /// Egress MAC for two-arm; all zero means "reuse the frame's destination MAC" (one-arm).
    pub src_mac: [u8; 6],
    /// 0: send back out of the ingress interface (XDP_TX); n: redirect via `TX_PORTS[n]`.
    pub tx_port: u32,
    pub family: u8,
    /// `BACKEND_F_*`.
    pub state: u8,
    /// 1 + the id of the VIP this backend id belongs to; 0 (entries written before this field
    /// existed): not checked. Ids are reused, so a flow tracked long ago can name an id that
    /// now belongs to another VIP; the forwarder then re-picks it through its own VIP's ring.
    pub vip: u16,
}

impl Backend {
    #[inline(always)]
    pub const fn is_down(&self) -> bool {
        self.state & crate::consts::BACKEND_F_DOWN != 0
    }

    /// `Backend::vip` for a backend of VIP `vip_id`.
    #[inline(always)]
    pub const fn vip_tag(vip_id: u32) -> u16 {
        (vip_id + 1) as u16
    }

    /// Whether this entry may carry flows of VIP `vip_id`.
    #[inline(always)]
    pub const fn serves(&self, vip_id: u32) -> bool {
        self.vip == 0 || self.vip == Self::vip_tag(vip_id)
    }
}

/// A flow as the forwarder sees it: key of the conntrack map and input of the flow hash.
/// Aligned to 8 so the forwarder can write its last 8 bytes in one store (see `parse`).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    pub src_port_be: u16,
    pub dst_port_be: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// The conntrack key of an IPv4 flow (`CONNTRACK_V4`): the fields of its `FlowKey` that can be
/// non-zero, in 16 bytes. The kernel hashes and compares whole keys on every lookup and insert
/// (a test program doing one lookup of either size: 16 bytes about 13 ns faster than 40).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey4 {
    pub src: u32,
    pub dst: u32,
    pub src_port_be: u16,
    pub dst_port_be: u16,
    pub proto: u8,
    // Two fields, not `[u8; 3]`: LLVM clears three bytes with a call to `memset` (a BPF
    // subprogram and its loop), two fields with two stores.
    pub _pad1: u8,
    pub _pad2: u16,
}

impl FlowKey4 {
    /// The 16-byte key of an IPv4 flow (the caller knows the family), written as two 64-bit
    /// words: the kernel reads the key in 32- and 64-bit loads to hash and compare it, and a
    /// load that spans several narrower stores cannot be forwarded from them (the CPU waits
    /// for the stores to retire, about 15 cycles each time).
    #[inline(always)]
    pub const fn of(k: &FlowKey) -> Self {
        let addrs = k.src.0[0] as u64 | (k.dst.0[0] as u64) << 32;
        let rest = k.src_port_be as u64 | (k.dst_port_be as u64) << 16 | (k.proto as u64) << 32;
        #[cfg(target_endian = "little")]
        {
            // SAFETY: FlowKey4 is 16 bytes of integers without padding, laid out as these
            // words little-endian.
            unsafe { core::mem::transmute::<[u64; 2], FlowKey4>([addrs, rest]) }
        }
        #[cfg(target_endian = "big")]
        {
            let _ = (addrs, rest);
            FlowKey4 {
                src: k.src.0[0],
                dst: k.dst.0[0],
                src_port_be: k.src_port_be,
                dst_port_be: k.dst_port_be,
                proto: k.proto,
                _pad1: 0,
                _pad2: 0,
            }
        }
    }

    /// The flow as the rest of xlb names it.
    pub const fn widen(&self) -> FlowKey {
        FlowKey {
            src: Addr::v4(self.src),
            dst: Addr::v4(self.dst),
            src_port_be: self.src_port_be,
            dst_port_be: self.dst_port_be,
            proto: self.proto,
            family: FAMILY_V4,
            _pad: [0; 2],
        }
    }
}

/// Conntrack value: one per flow, shared by every CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    pub backend_id: u32,
    pub _pad: u32,
    /// `CLOCK` (the daemon's coarse monotonic clock, up to `CLOCK_LEAD_NS` ahead) at the last
    /// packet.
    pub last_seen_ns: u64,
}

impl FlowState {
    /// An entry for `backend_id` stamped `last_seen_ns`, written as two 64-bit words: the
    /// kernel copies a map value in 64-bit loads, which two 32-bit stores cannot forward.
    #[inline(always)]
    pub const fn new(backend_id: u32, last_seen_ns: u64) -> Self {
        #[cfg(target_endian = "little")]
        {
            // SAFETY: FlowState is 16 bytes of integers: backend_id and zero padding (the
            // first word, little-endian), then last_seen_ns.
            unsafe {
                core::mem::transmute::<[u64; 2], FlowState>([backend_id as u64, last_seen_ns])
            }
        }
        #[cfg(target_endian = "big")]
        {
            FlowState {
                backend_id,
                _pad: 0,
                last_seen_ns,
            }
        }
    }

    /// Idle for longer than `timeout_s` seconds at `now` (0: never expires).
    #[inline(always)]
    pub const fn expired(&self, now: u64, timeout_s: u32) -> bool {
        timeout_s != 0 && now.saturating_sub(self.last_seen_ns) > timeout_s as u64 * 1_000_000_000
    }
}

/// Per-CPU count of flows admitted into conntrack within one window of the daemon's clock
/// (about a second: `window` is the clock in units of 2^30 ns).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateWindow {
    pub window: u64,
    pub count: u32,
    pub _pad: u32,
}

impl RateWindow {
    /// Whether one more new flow fits under `limit` per window at `now` (0: no limit).
    #[inline(always)]
    pub fn admit(&mut self, now: u64, limit: u32) -> bool {
        if limit == 0 {
            return true;
        }
        let w = now >> 30;
        if self.window != w {
            self.window = w;
            self.count = 0;
        }
        if self.count >= limit {
            return false;
        }
        self.count += 1;
        true
    }
}

/// The single entry of the `CONFIG` array: settings the daemon may change at run time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbConfig {
    /// Base of the outer IPv6 source; the bits of `encap_src_v6_mask` (last word) come from the
    /// flow hash so backends' RSS spreads flows.
    pub encap_src_v6: Addr,
    /// Base of the outer IPv4 source (wire order) and the bits taken from the flow hash.
    pub encap_src_v4: u32,
    pub encap_src_v4_mask: u32,
    pub encap_src_v6_mask: u32,
    /// Seed of every flow hash; LB instances behind one ECMP group must share it.
    pub hash_seed: u32,
    /// Largest L3 packet that may leave after encapsulation.
    pub mtu: u16,
    /// GUE destination port (wire order).
    pub gue_port_be: u16,
    /// `CFG_F_*`.
    pub flags: u16,
    /// Possible CPUs (informational: conntrack is shared, nothing searches other CPUs).
    pub nr_cpus: u16,
    /// New flows (SYNs, first UDP datagrams) tracked per CPU per window of `RateWindow`;
    /// above it they follow the ring untracked (0: no limit).
    pub new_flow_limit: u32,
    pub _pad: u32,
}

impl Addr {
    /// Bit of this address in the VIP filter: the words folded to 16 bits (in wire order, so
    /// hosts of one IPv4 /24 or IPv6 /64 get different bits).
    #[inline(always)]
    pub const fn filter_bit(&self) -> u32 {
        let x = self.0[0] ^ self.0[1] ^ self.0[2] ^ self.0[3];
        (x ^ (x >> 16)) & (crate::consts::VIP_FILTER_BITS - 1)
    }
}

impl FlowKey {
    pub const fn is_v6(&self) -> bool {
        self.family == FAMILY_V6
    }
    pub const fn is_v4(&self) -> bool {
        self.family == FAMILY_V4
    }
}

const _: () = {
    assert!(core::mem::size_of::<Addr>() == 16);
    assert!(core::mem::size_of::<VipKey>() == 20);
    assert!(core::mem::size_of::<VipMeta>() == 16);
    assert!(core::mem::size_of::<VipSlot>() == 36);
    assert!(core::mem::size_of::<Backend>() == 36);
    assert!(crate::consts::MAX_VIPS < u16::MAX as u32);
    assert!(core::mem::size_of::<FlowKey>() == 40);
    assert!(core::mem::size_of::<FlowKey4>() == 16);
    assert!(core::mem::size_of::<FlowState>() == 16);
    assert!(core::mem::size_of::<LbConfig>() == 48);
    assert!(core::mem::size_of::<RateWindow>() == 16);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    use crate::stats::{BackendStats, Counter, VipStats};
    // SAFETY: every type is repr(C), Copy, made only of integers, with no padding (sizes asserted).
    unsafe impl aya::Pod for Addr {}
    unsafe impl aya::Pod for VipKey {}
    unsafe impl aya::Pod for VipMeta {}
    unsafe impl aya::Pod for VipSlot {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowKey4 {}
    unsafe impl aya::Pod for FlowState {}
    unsafe impl aya::Pod for LbConfig {}
    unsafe impl aya::Pod for RateWindow {}
    unsafe impl aya::Pod for Counter {}
    unsafe impl aya::Pod for VipStats {}
    unsafe impl aya::Pod for BackendStats {}
    unsafe impl aya::Pod for crate::loadgen::LoadgenConfig {}
}

#[cfg(feature = "user")]
mod conv {
    use core::net::IpAddr;

    use super::*;

    impl From<IpAddr> for Addr {
        fn from(ip: IpAddr) -> Self {
            match ip {
                IpAddr::V4(v4) => Addr::from_bytes(&v4.octets()),
                IpAddr::V6(v6) => Addr::from_bytes(&v6.octets()),
            }
        }
    }

    impl Addr {
        pub fn to_ip(&self, family: u8) -> IpAddr {
            let b = self.to_bytes();
            if family == FAMILY_V6 {
                IpAddr::from(b)
            } else {
                IpAddr::from([b[0], b[1], b[2], b[3]])
            }
        }
    }

    pub fn family_of(ip: &IpAddr) -> u8 {
        if ip.is_ipv6() { FAMILY_V6 } else { FAMILY_V4 }
    }
}

#[cfg(feature = "user")]
pub use conv::family_of;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consts::{FAMILY_V6, PROTO_UDP};

    fn flow(family: u8) -> FlowKey {
        FlowKey {
            src: Addr([0x0a00_0001, 7, 8, 9]),
            dst: Addr([0xc000_0201, 1, 2, 3]),
            src_port_be: 0x1234,
            dst_port_be: 0x5000,
            proto: PROTO_UDP,
            family,
            _pad: [0; 2],
        }
    }

    /// The word-at-a-time constructors build exactly what the fields say.
    #[test]
    fn word_built_keys_and_entries_match_their_fields() {
        let k = flow(FAMILY_V6);
        for port in [0, 0x5000] {
            assert_eq!(
                VipKey::of_flow(&k, port),
                VipKey {
                    addr: k.dst,
                    port_be: port,
                    proto: k.proto,
                    family: k.family,
                }
            );
        }
        let k = flow(FAMILY_V4);
        let k4 = FlowKey4::of(&k);
        assert_eq!(
            k4,
            FlowKey4 {
                src: 0x0a00_0001,
                dst: 0xc000_0201,
                src_port_be: 0x1234,
                dst_port_be: 0x5000,
                proto: PROTO_UDP,
                _pad1: 0,
                _pad2: 0,
            }
        );
        assert_eq!(
            k4.widen(),
            FlowKey {
                src: Addr::v4(0x0a00_0001),
                dst: Addr::v4(0xc000_0201),
                ..k
            }
        );
        assert_eq!(
            FlowState::new(0xdead_beef, 42),
            FlowState {
                backend_id: 0xdead_beef,
                _pad: 0,
                last_seen_ns: 42,
            }
        );
    }
}
