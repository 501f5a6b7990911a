//! Which flows a node ships to its peers and how it takes in theirs, without I/O.
//!
//! Every node builds the same rings from the same config, so a flow that moves to another node
//! keeps its backend, unless the flow is *divergent*: tracked on a backend other than the one
//! the ring picks now (it started before a backend was added, drained, removed or reweighted).
//! Only those are shipped. A received flow is written into this node's own conntrack (by
//! backend address: ids differ between nodes), so when the routers move it here its first
//! packet is a conntrack hit: the forwarder needs no extra lookup and a SYN still takes the
//! ring. An entry this node tracks itself is never overwritten.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
};

use lb_common::{FlowState, VipKey, VipMeta, family_of, hash::flow_hash};
use ring::digest;

use super::{Env, Maps, MapsError, State};
use crate::{
    config::{VipRef, flow_key},
    sync::wire::FlowRecord,
};

/// `FlowState::_pad` of an entry written from a peer's record; the low bits keep the written
/// stamp so a later packet through this node (which restamps it) shows the flow is now ours.
pub const SYNCED: u32 = 1 << 31;
const STAMP_MASK: u32 = SYNCED - 1;

fn stamp_bits(last_seen_ns: u64) -> u32 {
    // ~1 ms units: any restamp by the forwarder changes them.
    (last_seen_ns >> 20) as u32 & STAMP_MASK
}

/// Written from a peer and not seen locally since.
pub fn is_peer_only(s: &FlowState) -> bool {
    s._pad & SYNCED != 0 && s._pad & STAMP_MASK == stamp_bits(s.last_seen_ns)
}

/// What a scan found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Divergent {
    pub records: Vec<FlowRecord>,
    /// Tracked flows looked at.
    pub scanned: usize,
}

/// What taking in a peer's records did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Received {
    /// New or refreshed entries.
    pub written: u64,
    /// Flows this node tracks itself (kept as they are).
    pub local: u64,
    /// Records refused, by reason.
    pub refused: BTreeMap<&'static str, u64>,
    /// VIPs whose config digest differs from ours.
    pub mismatched: BTreeSet<VipRef>,
}

struct VipView {
    vip: VipRef,
    meta: VipMeta,
    timeout_s: u32,
    ring: Vec<u32>,
}

impl State {
    /// The config digest of every VIP: what its ring is built from (seed, ring size, hash
    /// mode, backends and weights). Nodes whose digests differ pick different backends.
    pub fn vip_digests(&self) -> BTreeMap<VipRef, u64> {
        let cfg = &self.cfg;
        cfg.vips
            .iter()
            .map(|v| {
                let mut backends: Vec<(IpAddr, u32)> =
                    v.backends.iter().map(|b| (b.address, b.weight)).collect();
                backends.sort();
                let text = format!(
                    "{}|{}|{}|{:?}|{:?}",
                    cfg.forwarding.hash_seed,
                    v.ring_size.unwrap_or(cfg.daemon.ring_size),
                    v.id(),
                    v.hash,
                    backends
                );
                let d = digest::digest(&digest::SHA256, text.as_bytes());
                let mut b = [0u8; 8];
                b.copy_from_slice(&d.as_ref()[..8]);
                (v.id(), u64::from_be_bytes(b))
            })
            .collect()
    }

    fn vip_views(&self, maps: &dyn Maps) -> Result<HashMap<VipKey, VipView>, MapsError> {
        let mut out = HashMap::new();
        for v in &self.cfg.vips {
            let id = v.id();
            let key = id.key();
            let Some(meta) = self.published.vips.get(&key) else {
                continue;
            };
            if !v.conntrack || meta.ring_size == 0 {
                continue;
            }
            out.insert(
                key,
                VipView {
                    vip: id,
                    meta: *meta,
                    timeout_s: self.cfg.idle_timeout(v),
                    ring: maps.ring(meta.vip_id)?,
                },
            );
        }
        Ok(out)
    }

    /// The live flows tracked on another backend than their VIP's ring picks now. Flows
    /// written from a peer and not seen here since are left to that peer.
    pub fn divergent(&self, maps: &dyn Maps, now_ns: u64) -> Result<Divergent, MapsError> {
        let views = self.vip_views(maps)?;
        let seed = self.cfg.forwarding.hash_seed;
        let flows = maps.flows()?;
        let mut out = Divergent {
            scanned: flows.len(),
            ..Divergent::default()
        };
        for (key, s) in flows {
            let vk = VipKey {
                addr: key.dst,
                port_be: key.dst_port_be,
                proto: key.proto,
                family: key.family,
            };
            let Some(v) = views
                .get(&vk)
                .or_else(|| views.get(&VipKey { port_be: 0, ..vk }))
            else {
                continue;
            };
            if s.expired(now_ns, v.timeout_s) || is_peer_only(&s) {
                continue;
            }
            let slot = flow_hash(&key, v.meta.hash_mode, seed) % v.meta.ring_size;
            if v.ring.get(slot as usize) == Some(&s.backend_id) {
                continue;
            }
            let Some(m) = self.members.get(&s.backend_id) else {
                continue;
            };
            // A backend that is down re-picks its flows on every node alike.
            if m.vip != v.vip || m.value.is_down() {
                continue;
            }
            out.records.push(FlowRecord {
                vip: v.vip,
                src: key.src.to_ip(key.family),
                src_port: u16::from_be(key.src_port_be),
                backend: m.address,
            });
        }
        out.records.sort();
        Ok(out)
    }

    /// Write a peer's records into conntrack: each as a flow of its VIP to the backend of that
    /// address, stamped now; a flow this node tracks itself is kept.
    pub fn receive(
        &self,
        env: &mut Env,
        digests: &BTreeMap<VipRef, u64>,
        records: &[FlowRecord],
    ) -> Received {
        let ours = self.vip_digests();
        let mut r = Received::default();
        let now = env.clock.stamp();
        let by_member = self.ids.by_member();
        let refuse = |r: &mut Received, why: &'static str| {
            *r.refused.entry(why).or_default() += 1;
        };
        for rec in records {
            match (ours.get(&rec.vip), digests.get(&rec.vip)) {
                (None, _) => {
                    refuse(&mut r, "unknown_vip");
                    continue;
                }
                (Some(a), Some(b)) if a == b => {}
                _ => {
                    r.mismatched.insert(rec.vip);
                    refuse(&mut r, "config_mismatch");
                    continue;
                }
            }
            if family_of(&rec.src) != family_of(&rec.vip.address)
                || family_of(&rec.backend) != family_of(&rec.vip.address)
            {
                refuse(&mut r, "malformed");
                continue;
            }
            let Some(&id) = by_member.get(&(rec.vip, rec.backend)) else {
                refuse(&mut r, "unknown_backend");
                continue;
            };
            let key = flow_key(
                SocketAddr::new(rec.src, rec.src_port),
                SocketAddr::new(rec.vip.address, rec.vip.port),
                rec.vip.protocol,
            );
            match env.maps.flow(&key) {
                Ok(Some(s)) if s._pad & SYNCED == 0 || !is_peer_only(&s) => {
                    r.local += 1;
                    continue;
                }
                Ok(_) => {}
                Err(_) => {
                    refuse(&mut r, "map_error");
                    continue;
                }
            }
            let state = FlowState {
                backend_id: id,
                _pad: SYNCED | stamp_bits(now),
                last_seen_ns: now,
            };
            match env.maps.set_flow(&key, &state) {
                Ok(()) => r.written += 1,
                Err(_) => refuse(&mut r, "map_error"),
            }
        }
        r
    }
}
