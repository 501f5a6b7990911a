//! Reference model of the forwarder's decision: the same [`decision::route`] over plain maps.
//! Tests run packets through both the XDP program and this model and require agreement; the
//! daemon uses it for `xlb explain` against a snapshot of the live maps.

use std::{
    collections::{BTreeMap, HashMap},
    vec::Vec,
};

use crate::{
    decision::{self, Decision, Packet, Tables},
    stats::Reason,
    types::{Backend, FlowKey, FlowState, RateWindow, VipKey, VipMeta, VipSlot},
};

/// The forwarder's tables (conntrack is shared by every CPU, so one model is every CPU's view).
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub vips: BTreeMap<VipKey, VipMeta>,
    /// Ring of each VIP id.
    pub rings: HashMap<u32, Vec<u32>>,
    pub backends: HashMap<u32, Backend>,
    /// Backend id and last-seen clock of each tracked flow.
    pub conntrack: HashMap<FlowKey, FlowState>,
    pub seed: u32,
    /// The daemon's clock (`CLOCK`).
    pub now: u64,
    /// New flows per window (`LbConfig::new_flow_limit`, 0: none) and the window, as one CPU
    /// counts them.
    pub new_flow_limit: u32,
    pub rate: RateWindow,
}

impl Tables for Model {
    fn vip(&self, key: &VipKey) -> Option<VipMeta> {
        self.vips.get(key).copied()
    }
    fn vip_by_id(&self, vip_id: u32) -> Option<VipSlot> {
        vip_by_id(&self.vips, vip_id)
    }
    fn flow(&mut self, key: &FlowKey) -> Option<FlowState> {
        self.conntrack
            .get(key)
            .filter(|s| s.backend_id != 0)
            .copied()
    }
    fn now(&self) -> u64 {
        self.now
    }
    fn stamp(&mut self, key: &FlowKey, now: u64) {
        if let Some(s) = self.conntrack.get_mut(key) {
            s.last_seen_ns = now;
        }
    }
    fn backend(&self, id: u32) -> Option<&Backend> {
        self.backends.get(&id)
    }
    fn ring_entry(&self, vip_id: u32, slot: u32) -> Option<u32> {
        self.rings.get(&vip_id)?.get(slot as usize).copied()
    }
    fn track(&mut self, key: &FlowKey, backend_id: u32) {
        self.conntrack.insert(
            *key,
            FlowState {
                backend_id,
                _pad: 0,
                last_seen_ns: self.now,
            },
        );
    }
    fn admit(&mut self) -> bool {
        self.rate.admit(self.now, self.new_flow_limit)
    }
}

/// What `VIP_BY_ID` holds for `vip_id`, derived from the VIP table (the daemon writes both):
/// the port or wildcard VIP with that id; echo-only entries (ICMP) have no slot.
pub fn vip_by_id(vips: &BTreeMap<VipKey, VipMeta>, vip_id: u32) -> Option<VipSlot> {
    vips.iter()
        .find(|(k, m)| m.vip_id == vip_id && VipSlot::carries(k))
        .map(|(k, m)| VipSlot { key: *k, meta: *m })
}

impl Model {
    /// The backend tracked for a flow, if any.
    pub fn tracked_backend(&self, key: &FlowKey) -> Option<u32> {
        self.conntrack.get(key).map(|s| s.backend_id)
    }
}

impl Model {
    /// Route a packet, updating conntrack as the forwarder would.
    pub fn route(&mut self, pkt: &Packet) -> Result<Decision, Reason> {
        let seed = self.seed;
        decision::route(self, pkt, seed)
    }

    /// Route without touching conntrack (for "what would happen" queries).
    pub fn explain(&self, pkt: &Packet) -> Result<Decision, Reason> {
        self.clone().route(pkt)
    }
}
