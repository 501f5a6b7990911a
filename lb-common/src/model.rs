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
    types::{Backend, FlowKey, VipKey, VipMeta},
};

/// One CPU's view of the forwarder's tables.
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub vips: BTreeMap<VipKey, VipMeta>,
    /// Ring of each VIP id.
    pub rings: HashMap<u32, Vec<u32>>,
    pub backends: HashMap<u32, Backend>,
    pub conntrack: HashMap<FlowKey, u32>,
    pub seed: u32,
}

impl Tables for Model {
    fn vip(&self, key: &VipKey) -> Option<VipMeta> {
        self.vips.get(key).copied()
    }
    fn tracked(&mut self, key: &FlowKey) -> Option<u32> {
        self.conntrack.get(key).copied().filter(|&id| id != 0)
    }
    fn backend(&self, id: u32) -> Option<&Backend> {
        self.backends.get(&id)
    }
    fn ring_entry(&self, vip_id: u32, slot: u32) -> Option<u32> {
        self.rings.get(&vip_id)?.get(slot as usize).copied()
    }
    fn track(&mut self, key: &FlowKey, backend_id: u32) {
        self.conntrack.insert(*key, backend_id);
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
