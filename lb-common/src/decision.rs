//! "Which backend does this packet go to": the whole forwarding decision, generic over where the
//! tables live. The XDP program implements [`Tables`] with BPF maps, the reference model with
//! `HashMap`s; both run this same code, so `xlb explain` and the model compute what the kernel does.

use crate::{
    consts::{HASH_SRC_DST_IP, PROTO_TCP, RING_SIZE_DEFAULT, VIP_F_NO_CONNTRACK},
    hash::flow_hash,
    stats::Reason,
    types::{Backend, FlowKey, FlowState, VipKey, VipMeta, VipSlot},
};

/// What the parser found, in the terms the decision needs.
pub const PKT_NORMAL: u8 = 0;
/// An IPv4/IPv6 fragment (first or later): ports are unknown or unreliable, zeroed in the key.
pub const PKT_FRAGMENT: u8 = 1;
/// An ICMP/ICMPv6 error about a VIP flow; `key` is the inner flow flipped to client -> VIP.
pub const PKT_ICMP_ERROR: u8 = 2;
/// A TCP reset: it follows its flow's entry or the ring but never creates or rewrites one (a
/// reset ends a flow; backscatter of a spoofed flood must not fill the table).
pub const PKT_RESET: u8 = 3;
/// An ICMP/ICMPv6 echo request (no ports): answered in XDP where the address answers ping.
pub const PKT_ECHO: u8 = 4;

/// The parsed summary of one packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Packet {
    pub key: FlowKey,
    /// `PKT_*`.
    pub kind: u8,
    /// TCP SYN without ACK: opens a flow, so it takes the ring even if a stale entry exists.
    pub syn: bool,
}

/// How the backend was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    /// Conntrack hit on a usable backend.
    Tracked,
    /// Through the ring; a new conntrack entry was written (or the VIP is stateless).
    Ring,
    /// Tracked on a backend that is down: re-picked through the ring, entry rewritten.
    Failover,
    /// The entry was idle past the VIP's timeout: a new flow, re-picked, entry rewritten.
    Expired,
    /// A flow start above the new-flow limit: through the ring, no entry written.
    Deferred,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub backend_id: u32,
    pub pick: Pick,
    pub vip: VipMeta,
    /// The ring slot consulted (meaningless for `Pick::Tracked`).
    pub slot: u32,
}

/// The tables the decision reads and the one it writes.
pub trait Tables {
    fn vip(&self, key: &VipKey) -> Option<VipMeta>;
    /// The published VIP with this id (`VIP_BY_ID`).
    fn vip_by_id(&self, vip_id: u32) -> Option<VipSlot>;
    /// This flow's conntrack entry.
    fn flow(&mut self, key: &FlowKey) -> Option<FlowState>;
    /// The clock conntrack entries are stamped with.
    fn now(&self) -> u64;
    /// Stamp the entry of `key`, last returned by `flow`, with `now` (a flow that goes on).
    fn stamp(&mut self, key: &FlowKey, now: u64);
    fn backend(&self, id: u32) -> Option<&Backend>;
    /// Entry `slot` of VIP `vip_id`'s ring (0: empty slot).
    fn ring_entry(&self, vip_id: u32, slot: u32) -> Option<u32>;
    fn track(&mut self, key: &FlowKey, backend_id: u32);
    /// Whether one more flow may be tracked now (the new-flow limit).
    fn admit(&mut self) -> bool {
        true
    }
    /// False only if no VIP has this address (a cheap pre-filter; never a false "no").
    #[inline(always)]
    fn may_be_vip(&self, _addr: &crate::types::Addr) -> bool {
        true
    }
}

/// The pre-filter: a packet whose destination is no VIP address passes, with the reason the
/// lookups would give.
#[inline(always)]
pub fn check_vip_address<T: Tables>(t: &T, pkt: &Packet) -> Result<(), Reason> {
    if t.may_be_vip(&pkt.key.dst) {
        return Ok(());
    }
    Err(match pkt.kind {
        PKT_FRAGMENT => Reason::PassFragment,
        PKT_ICMP_ERROR => Reason::PassIcmp,
        _ => Reason::PassNotVip,
    })
}

/// An established flow on a live backend, found with one hash lookup: the conntrack entry
/// names the backend, the backend its VIP id, and `VIP_BY_ID` that VIP, which must still be
/// published for this packet's address, port and protocol. Anything else (no entry, a SYN, a
/// backend down, an entry idle past the timeout, a stateless VIP) goes on to `lookup_vip` and
/// `decide`, with the entry already read (`Err`).
///
/// One difference from looking the VIP up by address: a flow tracked under a wildcard VIP
/// keeps its backend when a VIP for its own port is added later (a new VIP takes new flows; it
/// never breaks one).
#[inline(always)]
pub fn established<T: Tables>(t: &mut T, pkt: &Packet) -> Result<Decision, Option<FlowState>> {
    // Fragments are stateless; a SYN opens a flow and takes the ring.
    if pkt.syn || pkt.kind == PKT_FRAGMENT || pkt.kind == PKT_ECHO {
        return Err(None);
    }
    let Some(s) = t.flow(&pkt.key) else {
        return Err(None);
    };
    let tracked = match t.backend(s.backend_id) {
        Some(b) if b.vip != 0 && !b.is_down() => t.vip_by_id(b.vip as u32 - 1),
        _ => None,
    };
    let Some(v) = tracked.filter(|v| v.holds(&pkt.key)) else {
        return Err(Some(s));
    };
    let now = t.now();
    if v.meta.flags & VIP_F_NO_CONNTRACK != 0 || s.expired(now, v.meta.idle_timeout_s) {
        return Err(Some(s));
    }
    t.stamp(&pkt.key, now);
    Ok(Decision {
        backend_id: s.backend_id,
        pick: Pick::Tracked,
        vip: v.meta,
        slot: 0,
    })
}

/// The VIP a packet belongs to, with fragment handling applied.
#[inline(always)]
pub fn lookup_vip<T: Tables>(t: &T, pkt: &Packet) -> Result<VipMeta, Reason> {
    let k = &pkt.key;
    if pkt.kind == PKT_FRAGMENT {
        // Later fragments carry no ports, so all fragments of a datagram use the address's
        // wildcard VIP and hash on addresses only: they can never be split across backends.
        let mut meta = t.vip(&VipKey::of_flow(k, 0)).ok_or(Reason::PassFragment)?;
        meta.hash_mode = HASH_SRC_DST_IP;
        meta.flags |= VIP_F_NO_CONNTRACK;
        return Ok(meta);
    }
    if let Some(meta) = t.vip(&VipKey::of_flow(k, k.dst_port_be)) {
        return Ok(meta);
    }
    // A key of its own rather than the port cleared in place (see `VipKey::of_flow`).
    let vk = VipKey::of_flow(k, 0);
    t.vip(&vk).ok_or(if pkt.kind == PKT_ICMP_ERROR {
        Reason::PassIcmp
    } else {
        Reason::PassNotVip
    })
}

/// Pick the backend for a packet of a known VIP; `flow` is its conntrack entry as
/// `established` read it.
#[inline(always)]
pub fn decide<T: Tables>(
    t: &mut T,
    pkt: &Packet,
    vip: VipMeta,
    seed: u32,
    flow: Option<FlowState>,
) -> Result<Decision, Reason> {
    let stateful = vip.flags & VIP_F_NO_CONNTRACK == 0;
    let mut pick = Pick::Ring;
    // A SYN opens a flow: it takes the ring even where an entry exists (a reused five-tuple).
    let mut had_entry = false;
    if stateful
        && !pkt.syn
        && let Some(s) = flow
    {
        had_entry = true;
        let now = t.now();
        match t.backend(s.backend_id) {
            _ if s.expired(now, vip.idle_timeout_s) => pick = Pick::Expired,
            Some(b) if !b.serves(vip.vip_id) => {} // a reused id: a new flow for this VIP
            Some(b) if !b.is_down() => {
                t.stamp(&pkt.key, now);
                return Ok(Decision {
                    backend_id: s.backend_id,
                    pick: Pick::Tracked,
                    vip,
                    slot: 0,
                });
            }
            _ => pick = Pick::Failover,
        }
    }
    if vip.ring_size == 0 {
        return Err(Reason::DropNoBackend);
    }
    let slot = ring_slot(flow_hash(&pkt.key, vip.hash_mode, seed), vip.ring_size);
    let id = match t.ring_entry(vip.vip_id, slot) {
        Some(id) if id != 0 => id,
        _ => return Err(Reason::DropNoBackend),
    };
    if t.backend(id).is_none() {
        return Err(Reason::DropBadBackend);
    }
    // ICMP errors and resets only follow their flow; they never create or move state.
    if stateful && pkt.kind == PKT_NORMAL {
        // Above the new-flow limit a flow start (a SYN, a UDP flow's first datagram) is not
        // tracked, so a spoofed SYN flood cannot evict established flows; TCP is tracked from
        // its first non-SYN packet, which a spoofed source never sends. Rewriting an existing
        // entry takes no room: a deferred SYN still replaces its five-tuple's old entry.
        let starts = !had_entry && (pkt.syn || pkt.key.proto != PROTO_TCP);
        if starts && !t.admit() && !(pkt.syn && t.flow(&pkt.key).is_some()) {
            pick = Pick::Deferred;
        } else {
            t.track(&pkt.key, id);
        }
    }
    Ok(Decision {
        backend_id: id,
        pick,
        vip,
        slot,
    })
}

/// `hash % ring_size`. The default size, 2^16 + 1, without a division: with
/// hash = q * 2^16 + r, hash = q * (2^16 + 1) + (r - q), so the remainder is r - q, plus the
/// size when negative (a division costs the new-flow path several ns; a few shifts do not).
#[inline(always)]
pub fn ring_slot(hash: u32, ring_size: u32) -> u32 {
    if ring_size != RING_SIZE_DEFAULT {
        return hash % ring_size;
    }
    let d = (hash & 0xffff) as i64 - (hash >> 16) as i64;
    (if d < 0 {
        d + RING_SIZE_DEFAULT as i64
    } else {
        d
    }) as u32
}

/// The full decision: the address pre-filter, an established flow, else the VIP lookup and
/// the backend.
#[inline(always)]
pub fn route<T: Tables>(t: &mut T, pkt: &Packet, seed: u32) -> Result<Decision, Reason> {
    check_vip_address(t, pkt)?;
    let flow = match established(t, pkt) {
        Ok(d) => return Ok(d),
        Err(flow) => flow,
    };
    let vip = lookup_vip(t, pkt)?;
    decide(t, pkt, vip, seed, flow)
}

/// Per-flow entropy for the outer source address / GUE source port, so backends' RSS spreads
/// encapsulated flows. It runs on every forwarded packet and BPF has no rotate: a multiply-xorshift
/// finaliser (murmur3's fmix32) is a dozen instructions where a jhash round was ninety, and mixes
/// every input bit into the low bits the masks keep.
#[inline(always)]
pub fn encap_entropy(key: &FlowKey) -> u32 {
    let s = &key.src.0;
    let ports = ((key.src_port_be as u32) << 16) | key.dst_port_be as u32;
    let mut x = s[0] ^ s[1] ^ s[2] ^ s[3] ^ ports.wrapping_mul(0x9e37_79b1) ^ key.proto as u32;
    x ^= x >> 16;
    x = x.wrapping_mul(0x85eb_ca6b);
    x ^= x >> 13;
    x = x.wrapping_mul(0xc2b2_ae35);
    x ^ (x >> 16)
}

/// Every kind of pick, through the shared decision over the reference model's tables.
#[cfg(all(test, feature = "user"))]
mod tests {
    use alloc::{vec, vec::Vec};

    use super::*;
    use crate::{
        consts::{BACKEND_F_DOWN, FAMILY_V4, PROTO_TCP, PROTO_UDP},
        model::Model,
        types::Addr,
    };

    const SEED: u32 = 7;
    const RING: u32 = 13;

    /// The division-free remainder for the default ring size is the remainder.
    #[test]
    fn ring_slot_is_the_remainder() {
        let edges = [
            0,
            1,
            0xffff,
            0x1_0000,
            0x1_0001,
            0x1_0002,
            u32::MAX - 1,
            u32::MAX,
        ];
        let mut x = 0x9e37_79b9u32;
        let spread = (0..200_000).map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        });
        for h in edges.into_iter().chain(spread) {
            assert_eq!(
                ring_slot(h, RING_SIZE_DEFAULT),
                h % RING_SIZE_DEFAULT,
                "{h:#x}"
            );
            assert_eq!(ring_slot(h, 65521), h % 65521, "{h:#x}");
        }
        // Every multiple of the size and its neighbours up to the top of the range.
        for m in (0..=u32::MAX / RING_SIZE_DEFAULT).map(|k| k * RING_SIZE_DEFAULT) {
            for h in [m, m.saturating_sub(1), m.saturating_add(1)] {
                assert_eq!(
                    ring_slot(h, RING_SIZE_DEFAULT),
                    h % RING_SIZE_DEFAULT,
                    "{h:#x}"
                );
            }
        }
    }

    fn a(x: u8) -> Addr {
        Addr::v4(u32::from_ne_bytes([10, 0, 0, x]))
    }

    fn key(dst: u8, dport: u16, sport: u16, proto: u8) -> FlowKey {
        FlowKey {
            src: Addr::v4(u32::from_ne_bytes([192, 0, 2, 1])),
            dst: a(dst),
            src_port_be: sport.to_be(),
            dst_port_be: dport.to_be(),
            proto,
            family: FAMILY_V4,
            _pad: [0; 2],
        }
    }

    fn pkt(k: FlowKey, syn: bool) -> Packet {
        Packet {
            key: k,
            kind: PKT_NORMAL,
            syn,
        }
    }

    fn backend(vip_id: u32) -> Backend {
        Backend {
            addr: a(100),
            family: FAMILY_V4,
            vip: Backend::vip_tag(vip_id),
            ..Backend::default()
        }
    }

    /// VIP 10.0.0.1:80/tcp (id 0) over backends 1 and 2 (ring alternating 1, 2); a stateless
    /// VIP 10.0.0.1:53/udp (id 1) on backend 3; a wildcard 10.0.0.2:*/udp (id 2) on 4; an
    /// empty VIP 10.0.0.3:80/tcp (id 3).
    fn model() -> Model {
        let mut m = Model {
            seed: SEED,
            ..Model::default()
        };
        let vip = |addr: Addr, port: u16, proto: u8| VipKey {
            addr,
            port_be: port.to_be(),
            proto,
            family: FAMILY_V4,
        };
        let meta = |vip_id, ring_size, flags| VipMeta {
            vip_id,
            ring_size,
            hash_mode: crate::consts::HASH_FIVE_TUPLE,
            fwd_mode: 0,
            flags,
            idle_timeout_s: 30,
        };
        m.vips.insert(vip(a(1), 80, PROTO_TCP), meta(0, RING, 0));
        m.vips
            .insert(vip(a(1), 53, PROTO_UDP), meta(1, RING, VIP_F_NO_CONNTRACK));
        m.vips.insert(vip(a(2), 0, PROTO_UDP), meta(2, RING, 0));
        m.vips.insert(vip(a(3), 80, PROTO_TCP), meta(3, 0, 0));
        m.rings
            .insert(0, (0..RING).map(|i| 1 + i % 2).collect::<Vec<_>>());
        m.rings.insert(1, vec![3; RING as usize]);
        m.rings.insert(2, vec![4; RING as usize]);
        for (id, vip_id) in [(1, 0), (2, 0), (3, 1), (4, 2)] {
            m.backends.insert(id, backend(vip_id));
        }
        m
    }

    fn slot_of(k: &FlowKey) -> u32 {
        crate::hash::flow_hash(k, crate::consts::HASH_FIVE_TUPLE, SEED) % RING
    }

    /// Backends' RSS sees only the masked low bits: flows that differ in one source port or one
    /// client address must still spread evenly over them.
    #[test]
    fn encap_entropy_spreads_neighbouring_flows_over_the_low_bits() {
        let spread = |keys: &mut dyn Iterator<Item = FlowKey>, bits: u32| {
            let mut buckets = vec![0u32; 1 << bits];
            let mut n = 0;
            for k in keys {
                buckets[(encap_entropy(&k) & ((1 << bits) - 1)) as usize] += 1;
                n += 1;
            }
            let mean = n / (1 << bits);
            let (lo, hi) = (buckets.iter().min().copied(), buckets.iter().max().copied());
            assert!(
                lo >= Some(mean / 2) && hi <= Some(mean * 2),
                "{bits} bits: min {lo:?} max {hi:?} mean {mean}"
            );
        };
        spread(&mut (0..16384u16).map(|p| key(1, 80, p, PROTO_TCP)), 8);
        spread(&mut (0..16384u16).map(|p| key(1, 80, p, PROTO_UDP)), 6);
        spread(
            &mut (0..16384u32).map(|i| {
                let mut k = key(1, 80, 40000, PROTO_TCP);
                k.src = Addr::v4(u32::from_be(0xc000_0000 | i));
                k
            }),
            8,
        );
    }

    #[test]
    fn a_new_flow_takes_its_ring_slot_and_is_tracked() {
        let mut m = model();
        let k = key(1, 80, 40000, PROTO_TCP);
        let d = m.route(&pkt(k, true)).expect("forwarded");
        assert_eq!(d.pick, Pick::Ring);
        assert_eq!(d.slot, slot_of(&k));
        assert_eq!(d.backend_id, 1 + slot_of(&k) % 2);
        assert_eq!(m.tracked_backend(&k), Some(d.backend_id));
    }

    #[test]
    fn a_tracked_flow_keeps_its_backend_whatever_the_ring_says() {
        let mut m = model();
        let k = key(1, 80, 40001, PROTO_TCP);
        let ring_pick = 1 + slot_of(&k) % 2;
        let other = 3 - ring_pick;
        m.track(&k, other);
        let d = m.route(&pkt(k, false)).expect("forwarded");
        assert_eq!((d.pick, d.backend_id), (Pick::Tracked, other));
    }

    #[test]
    fn a_syn_re_picks_through_the_ring_and_rewrites_the_entry() {
        let mut m = model();
        let k = key(1, 80, 40002, PROTO_TCP);
        let ring_pick = 1 + slot_of(&k) % 2;
        m.track(&k, 3 - ring_pick);
        let d = m.route(&pkt(k, true)).expect("forwarded");
        assert_eq!((d.pick, d.backend_id), (Pick::Ring, ring_pick));
        assert_eq!(m.tracked_backend(&k), Some(ring_pick));
    }

    #[test]
    fn a_flow_tracked_on_a_down_backend_fails_over_through_the_ring() {
        let mut m = model();
        let k = key(1, 80, 40003, PROTO_TCP);
        let ring_pick = 1 + slot_of(&k) % 2;
        let dead = 3 - ring_pick;
        m.track(&k, dead);
        if let Some(b) = m.backends.get_mut(&dead) {
            b.state = BACKEND_F_DOWN;
        }
        let d = m.route(&pkt(k, false)).expect("forwarded");
        assert_eq!((d.pick, d.backend_id), (Pick::Failover, ring_pick));
        assert_eq!(m.tracked_backend(&k), Some(ring_pick), "entry rewritten");
    }

    #[test]
    fn a_tracked_id_now_serving_another_vip_is_a_new_flow() {
        let mut m = model();
        let k = key(1, 80, 40004, PROTO_TCP);
        m.track(&k, 3); // backend 3 belongs to VIP id 1
        let d = m.route(&pkt(k, false)).expect("forwarded");
        assert_eq!(d.pick, Pick::Ring);
        assert_eq!(d.backend_id, 1 + slot_of(&k) % 2);
    }

    #[test]
    fn a_stateless_vip_follows_the_ring_and_tracks_nothing() {
        let mut m = model();
        let k = key(1, 53, 5353, PROTO_UDP);
        let d = m.route(&pkt(k, false)).expect("forwarded");
        assert_eq!((d.pick, d.backend_id), (Pick::Ring, 3));
        assert!(m.conntrack.is_empty());
    }

    #[test]
    fn a_port_without_its_own_vip_falls_back_to_the_wildcard() {
        let mut m = model();
        let d = m
            .route(&pkt(key(2, 9999, 1, PROTO_UDP), false))
            .expect("wildcard");
        assert_eq!((d.vip.vip_id, d.backend_id), (2, 4));
        assert_eq!(
            m.route(&pkt(key(1, 9999, 1, PROTO_TCP), false)),
            Err(Reason::PassNotVip),
            "no wildcard on 10.0.0.1"
        );
    }

    #[test]
    fn an_empty_or_broken_ring_drops() {
        let mut m = model();
        assert_eq!(
            m.route(&pkt(key(3, 80, 1, PROTO_TCP), true)),
            Err(Reason::DropNoBackend)
        );
        m.rings.insert(0, vec![0; RING as usize]);
        assert_eq!(
            m.route(&pkt(key(1, 80, 1, PROTO_TCP), true)),
            Err(Reason::DropNoBackend),
            "a zero slot"
        );
        m.rings.insert(0, vec![77; RING as usize]);
        assert_eq!(
            m.route(&pkt(key(1, 80, 1, PROTO_TCP), true)),
            Err(Reason::DropBadBackend),
            "an id without a backend"
        );
    }

    #[test]
    fn fragments_hash_on_addresses_through_the_wildcard_and_are_never_tracked() {
        let mut m = model();
        let mut p = pkt(key(2, 0, 0, PROTO_UDP), false);
        p.kind = PKT_FRAGMENT;
        let d = m.route(&p).expect("forwarded");
        assert_eq!(d.vip.hash_mode, HASH_SRC_DST_IP);
        assert_eq!(d.backend_id, 4);
        assert!(m.conntrack.is_empty());
        let mut p = pkt(key(1, 0, 0, PROTO_TCP), false);
        p.kind = PKT_FRAGMENT;
        assert_eq!(m.route(&p), Err(Reason::PassFragment));
    }

    #[test]
    fn icmp_errors_follow_their_flow_and_create_nothing() {
        let mut m = model();
        let k = key(1, 80, 40005, PROTO_TCP);
        let mut p = pkt(k, false);
        p.kind = PKT_ICMP_ERROR;
        let d = m.route(&p).expect("forwarded");
        assert_eq!(d.pick, Pick::Ring);
        assert!(m.conntrack.is_empty(), "an error never creates state");
        m.track(&k, 2);
        assert_eq!(m.route(&p).map(|d| d.backend_id), Ok(2));
        let mut p = pkt(key(9, 80, 1, PROTO_TCP), false);
        p.kind = PKT_ICMP_ERROR;
        assert_eq!(m.route(&p), Err(Reason::PassIcmp));
    }

    #[test]
    fn a_reset_follows_its_flow_but_never_creates_an_entry() {
        let mut m = model();
        let k = key(1, 80, 40008, PROTO_TCP);
        let mut p = pkt(k, false);
        p.kind = PKT_RESET;
        let d = m.route(&p).expect("forwarded");
        assert_eq!(d.backend_id, 1 + slot_of(&k) % 2);
        assert!(m.conntrack.is_empty(), "a reset never creates state");
        m.track(&k, 3 - d.backend_id);
        assert_eq!(
            m.route(&p).map(|d| d.backend_id),
            Ok(3 - (1 + slot_of(&k) % 2))
        );
    }

    /// The one-lookup path: entry -> backend -> its VIP by id; the VIP map is not consulted.
    #[test]
    fn an_established_flow_reaches_its_vip_by_the_backends_id() {
        let mut m = model();
        let k = key(1, 80, 40010, PROTO_TCP);
        let first = m.route(&pkt(k, true)).expect("forwarded");
        let vips = m.vips.clone();
        let d = established(&mut m, &pkt(k, false)).expect("established");
        assert_eq!(
            (d.pick, d.backend_id, d.vip),
            (Pick::Tracked, first.backend_id, first.vip)
        );
        // Without the slot (an older daemon's maps) the lookup by address answers the same.
        m.vips.clear();
        assert_eq!(
            established(&mut m, &pkt(k, false)).err(),
            Some(Some(m.conntrack[&k]))
        );
        m.vips = vips;
        // A SYN, a stateless VIP's packet and an idle entry never take this path.
        assert_eq!(established(&mut m, &pkt(k, true)), Err(None));
        m.now += 31_000_000_000;
        assert!(
            established(&mut m, &pkt(k, false)).is_err(),
            "idle past the timeout"
        );
        assert_eq!(m.route(&pkt(k, false)).map(|d| d.pick), Ok(Pick::Expired));
    }

    #[test]
    fn a_vip_id_reused_for_another_address_does_not_carry_old_flows() {
        let mut m = model();
        let k = key(1, 80, 40011, PROTO_TCP);
        m.route(&pkt(k, true)).expect("forwarded");
        // VIP id 0 now belongs to 10.0.0.3:80 (its backends keep their ids and tags).
        let meta = m.vips.remove(&VipKey {
            addr: a(1),
            port_be: 80u16.to_be(),
            proto: PROTO_TCP,
            family: FAMILY_V4,
        });
        let moved = VipKey {
            addr: a(3),
            port_be: 80u16.to_be(),
            proto: PROTO_TCP,
            family: FAMILY_V4,
        };
        m.vips.insert(moved, meta.expect("vip 0"));
        assert!(established(&mut m, &pkt(k, false)).is_err());
        assert_eq!(m.route(&pkt(k, false)), Err(Reason::PassNotVip));
    }

    #[test]
    fn a_flow_under_a_wildcard_keeps_its_backend_when_a_port_vip_is_added() {
        let mut m = model();
        let k = key(2, 7000, 40012, PROTO_UDP);
        let d = m.route(&pkt(k, false)).expect("wildcard");
        assert_eq!(d.backend_id, 4);
        m.vips.insert(
            VipKey {
                addr: a(2),
                port_be: 7000u16.to_be(),
                proto: PROTO_UDP,
                family: FAMILY_V4,
            },
            VipMeta {
                vip_id: 1,
                ring_size: RING,
                ..VipMeta::default()
            },
        );
        assert_eq!(m.route(&pkt(k, false)).map(|d| d.backend_id), Ok(4));
        let new = key(2, 7000, 40013, PROTO_UDP);
        assert_eq!(m.route(&pkt(new, false)).map(|d| d.backend_id), Ok(3));
    }

    #[test]
    fn explain_does_not_touch_conntrack() {
        let m = model();
        let k = key(1, 80, 40006, PROTO_TCP);
        assert_eq!(m.explain(&pkt(k, true)).map(|d| d.pick), Ok(Pick::Ring));
        assert!(m.conntrack.is_empty());
    }

    #[test]
    fn an_entry_idle_past_the_timeout_is_a_new_flow() {
        let mut m = model();
        let k = key(1, 80, 40007, PROTO_TCP);
        let ring_pick = 1 + slot_of(&k) % 2;
        m.now = 1_000_000_000_000;
        m.track(&k, 3 - ring_pick);
        m.now += 30_000_000_000;
        assert_eq!(
            m.route(&pkt(k, false)).map(|d| d.pick),
            Ok(Pick::Tracked),
            "idle exactly the timeout: still live, and stamped"
        );
        m.now += 31_000_000_000;
        let d = m.route(&pkt(k, false)).expect("forwarded");
        assert_eq!((d.pick, d.backend_id), (Pick::Expired, ring_pick));
        assert_eq!(m.tracked_backend(&k), Some(ring_pick), "entry rewritten");
    }

    #[test]
    fn above_the_new_flow_limit_syns_and_udp_starts_go_untracked() {
        let mut m = model();
        m.new_flow_limit = 2;
        let syns: Vec<FlowKey> = (0..4).map(|p| key(1, 80, 41000 + p, PROTO_TCP)).collect();
        let picks: Vec<Pick> = syns
            .iter()
            .map(|k| m.route(&pkt(*k, true)).expect("forwarded").pick)
            .collect();
        assert_eq!(
            picks,
            vec![Pick::Ring, Pick::Ring, Pick::Deferred, Pick::Deferred]
        );
        assert_eq!(m.conntrack.len(), 2);
        // The first non-SYN packet of a deferred flow is tracked, limit or not.
        let d = m.route(&pkt(syns[3], false)).expect("forwarded");
        assert_eq!(d.pick, Pick::Ring);
        assert_eq!(m.tracked_backend(&syns[3]), Some(d.backend_id));
        // A UDP flow's first datagram counts against the limit too.
        let u = key(2, 9999, 5000, PROTO_UDP);
        assert_eq!(m.route(&pkt(u, false)).map(|d| d.pick), Ok(Pick::Deferred));
        assert_eq!(m.tracked_backend(&u), None);
        // A deferred SYN still replaces its five-tuple's old entry (no room taken).
        m.track(&syns[0], 3 - (1 + slot_of(&syns[0]) % 2));
        let d = m.route(&pkt(syns[0], true)).expect("forwarded");
        assert_eq!(m.tracked_backend(&syns[0]), Some(d.backend_id));
        // The next window admits again.
        m.now += 1 << 30;
        assert_eq!(
            m.route(&pkt(key(1, 80, 42000, PROTO_TCP), true))
                .map(|d| d.pick),
            Ok(Pick::Ring)
        );
    }
}
