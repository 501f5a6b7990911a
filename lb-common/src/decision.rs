//! "Which backend does this packet go to": the whole forwarding decision, generic over where the
//! tables live. The XDP program implements [`Tables`] with BPF maps, the reference model with
//! `HashMap`s; both run this same code, so `xlb explain` and the model compute what the kernel does.

use crate::{
    consts::{HASH_SRC_DST_IP, VIP_F_NO_CONNTRACK},
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
    /// The backend id tracked for this flow (0 / absent: untracked).
    fn tracked(&mut self, key: &FlowKey) -> Option<u32>;
    fn backend(&self, id: u32) -> Option<&Backend>;
    /// Entry `slot` of VIP `vip_id`'s ring (0: empty slot).
    fn ring_entry(&self, vip_id: u32, slot: u32) -> Option<u32>;
    fn track(&mut self, key: &FlowKey, backend_id: u32);
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
    if stateful
        && !pkt.syn
        && let Some(id) = t.tracked(&pkt.key)
    {
        match t.backend(id) {
            Some(b) if !b.serves(vip.vip_id) => {} // a reused id: a new flow for this VIP
            Some(b) if !b.is_down() => {
                return Ok(Decision {
                    backend_id: id,
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
    // ICMP errors only follow their flow; they never create or move state.
    if stateful && pkt.kind == PKT_NORMAL {
        t.track(&pkt.key, id);
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
