//! "Which backend does this packet go to": the whole forwarding decision, generic over where the
//! tables live. The XDP program implements [`Tables`] with BPF maps, the reference model with
//! `HashMap`s; both run this same code, so `xlb explain` and the model compute what the kernel does.

use crate::{
    consts::{HASH_SRC_DST_IP, PROTO_TCP, VIP_F_NO_CONNTRACK},
    hash::{flow_hash, jhash_2words},
    stats::Reason,
    types::{Backend, FlowKey, VipKey, VipMeta},
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

/// A conntrack entry as the decision sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub backend_id: u32,
    /// Idle past the VIP's timeout.
    pub expired: bool,
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
    /// This flow's entry, judged against `timeout_s`; a live entry is stamped with the clock.
    fn tracked(&mut self, key: &FlowKey, timeout_s: u32) -> Option<Entry>;
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

/// The VIP a packet belongs to, with fragment handling applied.
#[inline(always)]
pub fn lookup_vip<T: Tables>(t: &T, pkt: &Packet) -> Result<VipMeta, Reason> {
    let k = &pkt.key;
    if !t.may_be_vip(&k.dst) {
        // The reasons the lookups below would give.
        return Err(match pkt.kind {
            PKT_FRAGMENT => Reason::PassFragment,
            PKT_ICMP_ERROR => Reason::PassIcmp,
            _ => Reason::PassNotVip,
        });
    }
    let mut vk = VipKey {
        addr: k.dst,
        port_be: k.dst_port_be,
        proto: k.proto,
        family: k.family,
    };
    if pkt.kind == PKT_FRAGMENT {
        // Later fragments carry no ports, so all fragments of a datagram use the address's
        // wildcard VIP and hash on addresses only: they can never be split across backends.
        vk.port_be = 0;
        let mut meta = t.vip(&vk).ok_or(Reason::PassFragment)?;
        meta.hash_mode = HASH_SRC_DST_IP;
        meta.flags |= VIP_F_NO_CONNTRACK;
        return Ok(meta);
    }
    if let Some(meta) = t.vip(&vk) {
        return Ok(meta);
    }
    vk.port_be = 0;
    t.vip(&vk).ok_or(if pkt.kind == PKT_ICMP_ERROR {
        Reason::PassIcmp
    } else {
        Reason::PassNotVip
    })
}

/// Pick the backend for a packet of a known VIP.
#[inline(always)]
pub fn decide<T: Tables>(
    t: &mut T,
    pkt: &Packet,
    vip: VipMeta,
    seed: u32,
) -> Result<Decision, Reason> {
    let stateful = vip.flags & VIP_F_NO_CONNTRACK == 0;
    let mut pick = Pick::Ring;
    // A SYN opens a flow: it takes the ring even where an entry exists (a reused five-tuple).
    let mut had_entry = false;
    if stateful
        && !pkt.syn
        && let Some(e) = t.tracked(&pkt.key, vip.idle_timeout_s)
    {
        had_entry = true;
        match t.backend(e.backend_id) {
            _ if e.expired => pick = Pick::Expired,
            Some(b) if !b.serves(vip.vip_id) => {} // a reused id: a new flow for this VIP
            Some(b) if !b.is_down() => {
                return Ok(Decision {
                    backend_id: e.backend_id,
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
    let slot = flow_hash(&pkt.key, vip.hash_mode, seed) % vip.ring_size;
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
        if starts && !t.admit() && !(pkt.syn && t.tracked(&pkt.key, 0).is_some()) {
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

/// The full decision: VIP lookup, then backend.
#[inline(always)]
pub fn route<T: Tables>(t: &mut T, pkt: &Packet, seed: u32) -> Result<Decision, Reason> {
    let vip = lookup_vip(t, pkt)?;
    decide(t, pkt, vip, seed)
}

/// Per-flow entropy for the outer source address / GUE source port, so backends' RSS spreads
/// encapsulated flows. Cheaper than the ring hash: it runs on every forwarded packet.
#[inline(always)]
pub fn encap_entropy(key: &FlowKey) -> u32 {
    let s = &key.src.0;
    let addr = s[0] ^ s[1] ^ s[2] ^ s[3];
    jhash_2words(
        addr,
        ((key.src_port_be as u32) << 16) | key.dst_port_be as u32,
        key.proto as u32,
    )
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
