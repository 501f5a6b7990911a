//! In-memory `Maps` and `Store` for tests: they keep what a kernel and a state file would, record
//! the sequence of writes, and fail on request.

use std::collections::{BTreeMap, HashMap};

use lb_common::{
    Backend, FlowKey, FlowState, LbConfig, VipKey, VipMeta,
    capture::{CaptureConfig, CaptureCounters},
    stats::{BackendStats, Counter, Reason, VipStats},
};

use super::{
    Resolved,
    diff::MapOp,
    maps::{Attached, Maps, MapsError},
    persist::{PersistError, Saved, Store},
    plan::NextHop,
};

/// A next hop for any address: 10.2.x.x out of ifindex 3 (`eth1`), everything else out of
/// ifindex 2 (`eth0`); the neighbour's MAC spells the address.
pub fn nexthop(addr: std::net::IpAddr) -> NextHop {
    let o = match addr {
        std::net::IpAddr::V4(a) => a.octets(),
        std::net::IpAddr::V6(a) => {
            let s = a.octets();
            [s[12], s[13], s[14], s[15]]
        }
    };
    let (ifindex, ifname) = if o[0] == 10 && o[1] == 2 {
        (3, "eth1")
    } else {
        (2, "eth0")
    };
    NextHop {
        ifindex,
        ifname: ifname.into(),
        src_mac: [2, 0, 0, 0, 0, ifindex as u8],
        via: addr,
        dst_mac: [2, 0xbe, 0, o[1], o[2], o[3]],
    }
}

/// Every asked next hop resolved by `nexthop`.
pub fn resolved(asked: &[(std::net::IpAddr, bool)]) -> Resolved {
    asked
        .iter()
        .map(|&(a, l2)| ((a, l2), Ok(nexthop(a))))
        .collect()
}

/// Interface indexes of the fake host: `eth0` is 2, `eth1` is 3.
pub fn ifindex(name: &str) -> Option<u32> {
    match name {
        "eth0" => Some(2),
        "eth1" => Some(3),
        _ => None,
    }
}

/// Maps held in memory.
#[derive(Clone, Debug, Default)]
pub struct FakeMaps {
    /// Every write, in order.
    pub log: Vec<MapOp>,
    /// Fail the write whose position in `log` (0-based, counting failed ones) this is.
    pub fail_at: Option<usize>,
    pub config: Option<LbConfig>,
    pub filter: Vec<u32>,
    pub tx_ports: BTreeMap<u32, u32>,
    pub backends: BTreeMap<u32, Backend>,
    pub rings: BTreeMap<u32, Vec<u32>>,
    pub vips: BTreeMap<VipKey, VipMeta>,
    pub links: BTreeMap<String, crate::config::AttachMode>,
    pub clock: u64,
    pub capture: Option<CaptureConfig>,
    /// Conntrack entries, as the forwarder would have written them.
    pub flows: Vec<(FlowKey, FlowState)>,
    pub vip_stats: HashMap<u32, VipStats>,
    pub backend_stats: HashMap<u32, BackendStats>,
    pub writes: usize,
}

impl FakeMaps {
    /// The writes of the log from `from` on, as short names (`backend 3`, `ring 0`, ...).
    pub fn names(&self, from: usize) -> Vec<String> {
        self.log[from..]
            .iter()
            .map(|op| match op {
                MapOp::VipFilter { .. } => "filter".to_string(),
                MapOp::Config(_) => "config".to_string(),
                MapOp::TxPort { slot, .. } => format!("txport {slot}"),
                MapOp::Backend { id, value } if value.is_down() => format!("down {id}"),
                MapOp::Backend { id, .. } => format!("backend {id}"),
                MapOp::Ring { vip_id, .. } => format!("ring {vip_id}"),
                MapOp::ClearRing { vip_id } => format!("unring {vip_id}"),
                MapOp::Vip { meta, .. } => format!("vip {}", meta.vip_id),
                MapOp::RemoveVip { .. } => "unvip".to_string(),
                MapOp::Attach { iface, .. } => format!("attach {iface}"),
                MapOp::Detach { iface } => format!("detach {iface}"),
            })
            .collect()
    }
}

fn missing(what: &str) -> MapsError {
    MapsError::new(what.to_string(), "not present")
}

impl Maps for FakeMaps {
    fn write(&mut self, op: &MapOp) -> Result<Option<Attached>, MapsError> {
        let n = self.writes;
        self.writes += 1;
        if self.fail_at == Some(n) {
            return Err(MapsError::new(format!("write {n}"), "injected failure"));
        }
        self.log.push(op.clone());
        match op {
            MapOp::VipFilter { words, .. } => self.filter = words.clone(),
            MapOp::Config(c) => self.config = Some(*c),
            MapOp::TxPort { slot, ifindex } => {
                self.tx_ports.insert(*slot, *ifindex);
            }
            MapOp::Backend { id, value } => {
                self.backends.insert(*id, *value);
            }
            MapOp::Ring { vip_id, table } => {
                self.rings.insert(*vip_id, table.to_vec());
            }
            MapOp::ClearRing { vip_id } => {
                self.rings.remove(vip_id);
            }
            MapOp::Vip { key, meta } => {
                self.vips.insert(*key, *meta);
            }
            MapOp::RemoveVip { key } => {
                self.vips.remove(key);
            }
            MapOp::Attach { iface, mode } => {
                let replaced = self.links.insert(iface.clone(), *mode).is_some();
                return Ok(Some(Attached {
                    iface: iface.clone(),
                    mode: *mode,
                    fell_back: false,
                    replaced,
                }));
            }
            MapOp::Detach { iface } => {
                self.links.remove(iface);
            }
        }
        Ok(None)
    }
    fn set_clock(&mut self, ns: u64) -> Result<(), MapsError> {
        self.clock = ns;
        Ok(())
    }
    fn set_capture(&mut self, c: &CaptureConfig) -> Result<(), MapsError> {
        self.capture = Some(*c);
        Ok(())
    }
    fn capture_counters(&self) -> Result<CaptureCounters, MapsError> {
        Ok(CaptureCounters::default())
    }
    fn flows(&self) -> Result<Vec<(FlowKey, FlowState)>, MapsError> {
        Ok(self.flows.clone())
    }
    fn flow(&self, key: &FlowKey) -> Result<Option<FlowState>, MapsError> {
        Ok(self.flows.iter().find(|(k, _)| k == key).map(|(_, v)| *v))
    }
    fn set_flow(&mut self, key: &FlowKey, state: &FlowState) -> Result<(), MapsError> {
        match self.flows.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = *state,
            None => self.flows.push((*key, *state)),
        }
        Ok(())
    }
    fn vips(&self) -> Result<Vec<(VipKey, VipMeta)>, MapsError> {
        Ok(self.vips.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn backends(&self) -> Result<Vec<(u32, Backend)>, MapsError> {
        Ok(self.backends.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn ring(&self, vip_id: u32) -> Result<Vec<u32>, MapsError> {
        self.rings
            .get(&vip_id)
            .cloned()
            .ok_or_else(|| missing("ring"))
    }
    fn ring_entry(&self, vip_id: u32, slot: u32) -> Result<u32, MapsError> {
        self.rings
            .get(&vip_id)
            .and_then(|r| r.get(slot as usize).copied())
            .ok_or_else(|| missing("ring slot"))
    }
    fn vip_stats(&self, vip_id: u32) -> Result<VipStats, MapsError> {
        Ok(self.vip_stats.get(&vip_id).copied().unwrap_or_default())
    }
    fn backend_stats(&self, id: u32) -> Result<BackendStats, MapsError> {
        Ok(self.backend_stats.get(&id).copied().unwrap_or_default())
    }
    fn reason_stats(&self) -> Result<Vec<(Reason, Counter)>, MapsError> {
        Ok(Reason::ALL
            .iter()
            .map(|r| (*r, Counter::default()))
            .collect())
    }
    fn conntrack_capacity(&self) -> Result<u32, MapsError> {
        Ok(lb_common::CONNTRACK_DEFAULT_ENTRIES)
    }
}

/// A state file in memory.
#[derive(Clone, Debug, Default)]
pub struct MemStore {
    pub saved: Option<Saved>,
    pub saves: usize,
    pub fail: bool,
}

impl Store for MemStore {
    fn save(&mut self, saved: &Saved) -> Result<(), PersistError> {
        if self.fail {
            return Err(PersistError::Write {
                path: "memory".into(),
                source: std::io::Error::other("injected failure"),
            });
        }
        self.saved = Some(saved.clone());
        self.saves += 1;
        Ok(())
    }
}
