//! A plan against what is published becomes an ordered list of writes. The order is the one
//! packets in flight need: the address filter grows before new VIPs appear; backends are
//! written before the ring slots that name them; a ring before the VIP that uses it; VIPs are
//! unpublished before the filter shrinks and before their backends go down.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
};

use lb_common::{Addr, BACKEND_F_DOWN, Backend, LbConfig, VipKey, VipMeta};

use super::plan::{Plan, RingPlan};
use crate::config::AttachMode;

/// The inputs of one published ring: same inputs, same table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingInputs {
    pub size: u32,
    pub seed: u32,
    /// (address, weight, id) of the members in the ring, sorted.
    pub members: Vec<(IpAddr, u32, u32)>,
}

/// One kernel write. Attach and detach are links, not maps, but they belong to the same ordered
/// sequence (last: everything they expose is written by then).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapOp {
    /// The VIP address filter; `old` is what is believed written (words that differ are
    /// written; all of them when `old` is not a whole filter).
    VipFilter {
        words: Vec<u32>,
        old: Vec<u32>,
    },
    Config(LbConfig),
    TxPort {
        slot: u32,
        ifindex: u32,
    },
    Backend {
        id: u32,
        value: Backend,
    },
    /// A complete ring, swapped in with one update.
    Ring {
        vip_id: u32,
        table: Arc<Vec<u32>>,
    },
    /// Drop the ring of a VIP id no VIP uses any more (its kernel memory is freed).
    ClearRing {
        vip_id: u32,
    },
    Vip {
        key: VipKey,
        meta: VipMeta,
    },
    RemoveVip {
        key: VipKey,
    },
    Attach {
        iface: String,
        mode: AttachMode,
    },
    Detach {
        iface: String,
    },
}

impl MapOp {
    /// Kernel writes this op makes.
    pub fn writes(&self) -> usize {
        match self {
            MapOp::VipFilter { words, old } if old.len() == words.len() => {
                words.iter().zip(old).filter(|(a, b)| a != b).count()
            }
            MapOp::VipFilter { words, .. } => words.len(),
            _ => 1,
        }
    }
}

/// The value a backend slot holds once nothing may use it.
pub fn down_backend() -> Backend {
    Backend {
        state: BACKEND_F_DOWN,
        ..Backend::default()
    }
}

/// What this daemon has written (empty after a start: the pinned contents are unknown, so the
/// first apply writes everything).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Published {
    pub config: Option<LbConfig>,
    pub filter: Vec<u32>,
    /// ifindex -> devmap slot.
    pub tx_ports: BTreeMap<u32, u32>,
    pub backends: BTreeMap<u32, Backend>,
    /// What each published ring was built from (the tables live only in the maps).
    pub rings: HashMap<u32, RingInputs>,
    pub vips: BTreeMap<VipKey, VipMeta>,
    /// Interfaces this process attached, with the mode asked for.
    pub links: BTreeMap<String, AttachMode>,
}

impl Published {
    /// Record a write that succeeded; `inputs` for a ring.
    pub fn record(&mut self, op: &MapOp, inputs: Option<&RingInputs>) {
        match op {
            MapOp::VipFilter { words, .. } => self.filter = words.clone(),
            MapOp::Config(c) => self.config = Some(*c),
            MapOp::TxPort { slot, ifindex } => {
                self.tx_ports.insert(*ifindex, *slot);
            }
            MapOp::Backend { id, value } if *value == down_backend() => {
                self.backends.remove(id);
            }
            MapOp::Backend { id, value } => {
                self.backends.insert(*id, *value);
            }
            MapOp::ClearRing { vip_id } => {
                self.rings.remove(vip_id);
            }
            MapOp::Ring { vip_id, .. } => match inputs {
                Some(i) => {
                    self.rings.insert(*vip_id, i.clone());
                }
                None => {
                    self.rings.remove(vip_id);
                }
            },
            MapOp::Vip { key, meta } => {
                self.vips.insert(*key, *meta);
            }
            MapOp::RemoveVip { key } => {
                self.vips.remove(key);
            }
            MapOp::Attach { iface, mode } => {
                self.links.insert(iface.clone(), *mode);
            }
            MapOp::Detach { iface } => {
                self.links.remove(iface);
            }
        }
    }
}

/// The VIP address filter holding these addresses.
pub fn filter_words<'a>(addrs: impl IntoIterator<Item = &'a Addr>) -> Vec<u32> {
    let mut w = vec![0u32; lb_common::VIP_FILTER_WORDS as usize];
    for a in addrs {
        let bit = a.filter_bit();
        w[(bit >> 5) as usize] |= 1 << (bit & 31);
    }
    w
}

/// An op and, for a ring, the inputs it publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub op: MapOp,
    pub inputs: Option<RingInputs>,
}

impl From<MapOp> for Step {
    fn from(op: MapOp) -> Self {
        Step { op, inputs: None }
    }
}

/// The writes that take `published` to `plan`, in safe order. `held` are interfaces the
/// daemon's saved state says carry the forwarder (detached when no longer configured).
pub fn diff(plan: &Plan, published: &Published, held: &[String]) -> Vec<Step> {
    let mut out: Vec<Step> = Vec::new();
    let mut push = |op: MapOp| out.push(op.into());

    // The filter holds old and new VIPs while both may be published, and must before the
    // config that switches it on is written.
    let both = filter_words(
        published
            .vips
            .keys()
            .chain(plan.vips.keys())
            .map(|k| &k.addr),
    );
    if both != published.filter {
        push(MapOp::VipFilter {
            words: both.clone(),
            old: published.filter.clone(),
        });
    }
    if published.config != Some(plan.config) {
        push(MapOp::Config(plan.config));
    }
    for (ifindex, slot) in &plan.tx_ports {
        if published.tx_ports.get(ifindex) != Some(slot) {
            push(MapOp::TxPort {
                slot: *slot,
                ifindex: *ifindex,
            });
        }
    }
    for (id, m) in &plan.members {
        if published.backends.get(id) != Some(&m.value) {
            push(MapOp::Backend {
                id: *id,
                value: m.value,
            });
        }
    }
    for (vip_id, ring) in &plan.rings {
        if let RingPlan::Build { inputs, table } = ring {
            out.push(Step {
                op: MapOp::Ring {
                    vip_id: *vip_id,
                    table: table.clone(),
                },
                inputs: Some(inputs.clone()),
            });
        }
    }
    let mut push = |op: MapOp| out.push(op.into());
    for (k, meta) in &plan.vips {
        if published.vips.get(k) != Some(meta) {
            push(MapOp::Vip {
                key: *k,
                meta: *meta,
            });
        }
    }
    for k in published.vips.keys() {
        if !plan.vips.contains_key(k) {
            push(MapOp::RemoveVip { key: *k });
        }
    }
    // Rings nothing names any more: a 1M-slot ring is 4 MiB of kernel memory.
    let mut stale: Vec<u32> = published
        .rings
        .keys()
        .filter(|id| !plan.rings.contains_key(id))
        .copied()
        .collect();
    stale.sort_unstable();
    for vip_id in stale {
        push(MapOp::ClearRing { vip_id });
    }
    let only_new = filter_words(plan.vips.keys().map(|k| &k.addr));
    if only_new != both {
        push(MapOp::VipFilter {
            words: only_new,
            old: both,
        });
    }
    // Only now, with no ring or VIP naming them, backends go down: those the plan frees, and
    // any this daemon wrote that the plan no longer has.
    let gone: BTreeSet<u32> = published
        .backends
        .keys()
        .filter(|id| !plan.members.contains_key(id))
        .chain(&plan.freed)
        .copied()
        .collect();
    for id in gone {
        push(MapOp::Backend {
            id,
            value: down_backend(),
        });
    }
    for iface in &plan.interfaces {
        if published.links.get(&iface.name) != Some(&iface.mode) {
            push(MapOp::Attach {
                iface: iface.name.clone(),
                mode: iface.mode,
            });
        }
    }
    for name in held {
        if !plan.interfaces.iter().any(|i| &i.name == name) {
            push(MapOp::Detach {
                iface: name.clone(),
            });
        }
    }
    out
}
