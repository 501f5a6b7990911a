//! What the maps should hold for a configuration: every backend's value (next hop, egress port,
//! health), every VIP's ring (Maglev over the healthy, undrained members, or the quorum policy's
//! choice) and metadata, the egress ports and the run-time config. Pure: everything it needs is
//! given, everything that can fail fails here, before any write.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
};

use lb_common::{
    Addr, BACKEND_F_DOWN, Backend, LbConfig, MAX_TX_PORTS, VIP_F_NO_CONNTRACK, VipKey, VipMeta,
    family_of,
    maglev::{self, MaglevBackend},
};

use super::{
    diff::{Published, RingInputs},
    health::Health,
    ids::{Allocation, Ids, Removing},
};
use crate::config::{BackendConfig, Config, Interface, QuorumLoss, StartState, VipRef};

/// Where frames to one backend go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NextHop {
    /// Egress interface.
    pub ifindex: u32,
    pub ifname: String,
    /// The egress interface's own MAC (source of rewritten frames).
    pub src_mac: [u8; 6],
    /// The neighbour frames are addressed to: the backend itself or the gateway towards it.
    pub via: IpAddr,
    pub dst_mac: [u8; 6],
}

/// Why a next hop is unknown: no route, no neighbour answer, a gatewayed L2 backend.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unreachable(pub String);

/// One backend as published in `BACKENDS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub vip: VipRef,
    pub address: IpAddr,
    pub value: Backend,
    pub nexthop: Option<NextHop>,
    /// Next hop currently unresolvable (the last known MAC is kept meanwhile).
    pub unresolved: Option<String>,
}

/// A VIP's ring in a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RingPlan {
    /// The published ring stays (same inputs, or kept below quorum).
    Keep,
    Build {
        inputs: RingInputs,
        table: Arc<Vec<u32>>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub ids: Ids,
    pub removing: Vec<Removing>,
    pub freed: BTreeSet<u32>,
    pub draining: usize,
    pub members: BTreeMap<u32, Member>,
    /// ifindex -> devmap slot (grows only: a slot is never reassigned under a backend).
    pub tx_ports: BTreeMap<u32, u32>,
    pub rings: BTreeMap<u32, RingPlan>,
    pub vips: BTreeMap<VipKey, VipMeta>,
    pub config: LbConfig,
    /// VIPs with fewer healthy backends than their quorum.
    pub below_quorum: BTreeSet<VipRef>,
    pub interfaces: Vec<Interface>,
}

/// Everything a plan is made from besides the configuration and its ids.
pub struct Inputs<'a> {
    /// Next hop of every member id of the allocation, or why it is unknown (the member is
    /// then published down and left out of the rings until it resolves).
    pub nexthops: &'a HashMap<u32, Result<NextHop, Unreachable>>,
    /// Recorded health (members without a record start as their check says).
    pub health: &'a HashMap<u32, Health>,
    pub published: &'a Published,
    /// The ifindex of the only attached interface (`None` with several): next hops out of it
    /// use XDP_TX rather than a devmap redirect.
    pub single_ingress: Option<u32>,
    /// A capture is running (`CFG_F_CAPTURE`).
    pub capture: bool,
    pub nr_cpus: u16,
}

/// Why a plan cannot be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct PlanError(pub Vec<String>);

/// The outer-source mask: the low `bits` of an address in wire order.
pub fn low_bits_mask(bits: u8) -> u32 {
    let host = if bits == 0 {
        0
    } else {
        (u64::MAX >> (64 - bits as u32)) as u32
    };
    u32::from_ne_bytes(host.to_be_bytes())
}

/// `CONFIG` for a configuration (without run-time flags such as capture).
pub fn lb_config(cfg: &Config, nr_cpus: u16) -> LbConfig {
    let f = &cfg.forwarding;
    let mut flags = 0;
    // VIP_FILTER is always kept populated; the flag only says to use it.
    if f.vip_address_filter {
        flags |= lb_common::CFG_F_VIP_FILTER;
    }
    if cfg.vips.iter().any(|v| v.port == 0) {
        flags |= lb_common::CFG_F_WILDCARD_VIPS;
    }
    LbConfig {
        encap_src_v6: f
            .encap_source_v6
            .map(|a| Addr::from(IpAddr::V6(a)))
            .unwrap_or_default(),
        encap_src_v4: f
            .encap_source_v4
            .map(|a| u32::from_ne_bytes(a.octets()))
            .unwrap_or(0),
        encap_src_v4_mask: low_bits_mask(f.encap_source_v4_hash_bits),
        encap_src_v6_mask: low_bits_mask(f.encap_source_v6_hash_bits),
        hash_seed: f.hash_seed,
        mtu: f.mtu,
        gue_port_be: f.gue_port.to_be(),
        flags,
        nr_cpus,
        // The limit is counted per CPU: each takes its share, rounded up.
        new_flow_limit: cfg.new_flow_limit().div_ceil(nr_cpus.max(1) as u32),
        _pad: 0,
    }
}

/// Whether a member is down for the ring: its recorded health, or its check's start state.
fn is_down(id: u32, check_starts_down: bool, health: &HashMap<u32, Health>) -> bool {
    match health.get(&id) {
        Some(h) => !h.up,
        None => check_starts_down,
    }
}

pub fn plan(new: &Config, alloc: Allocation, inp: &Inputs) -> Result<Plan, PlanError> {
    let Allocation {
        ids,
        removing,
        freed,
        draining,
    } = alloc;
    let mut errs = Vec::new();
    let fwd: HashMap<VipRef, _> = new.vips.iter().map(|v| (v.id(), v)).collect();

    // Backend values: address, next hop, egress port, the VIP they belong to.
    let mut tx_ports = inp.published.tx_ports.clone();
    let mut members = BTreeMap::new();
    let mut unresolved = BTreeSet::new();
    for (vip, addr, id) in &ids.backends {
        if !fwd.contains_key(vip) {
            continue;
        }
        let nh = match inp.nexthops.get(id) {
            Some(Ok(nh)) => nh,
            other => {
                let reason = match other {
                    Some(Err(e)) => e.0.clone(),
                    _ => "next hop not resolved".to_string(),
                };
                unresolved.insert(*id);
                members.insert(
                    *id,
                    Member {
                        vip: *vip,
                        address: *addr,
                        value: Backend {
                            addr: Addr::from(*addr),
                            family: family_of(addr),
                            state: BACKEND_F_DOWN,
                            vip: ids.vip_id(vip).map_or(0, Backend::vip_tag),
                            ..Backend::default()
                        },
                        nexthop: None,
                        unresolved: Some(reason),
                    },
                );
                continue;
            }
        };
        let tx_port = if Some(nh.ifindex) == inp.single_ingress {
            0
        } else if let Some(s) = tx_ports.get(&nh.ifindex) {
            *s
        } else {
            match (1..MAX_TX_PORTS).find(|s| !tx_ports.values().any(|v| v == s)) {
                Some(s) => {
                    tx_ports.insert(nh.ifindex, s);
                    s
                }
                None => {
                    errs.push(format!("more than {} egress interfaces", MAX_TX_PORTS - 1));
                    0
                }
            }
        };
        members.insert(
            *id,
            Member {
                vip: *vip,
                address: *addr,
                value: Backend {
                    addr: Addr::from(*addr),
                    dst_mac: nh.dst_mac,
                    src_mac: if tx_port == 0 { [0; 6] } else { nh.src_mac },
                    tx_port,
                    family: family_of(addr),
                    state: 0,
                    vip: ids.vip_id(vip).map_or(0, Backend::vip_tag),
                },
                nexthop: Some(nh.clone()),
                unresolved: None,
            },
        );
    }

    // Health: configured members that are down leave the rings and take no packets.
    let by_member = ids.by_member();
    let down: BTreeSet<u32> = new
        .vips
        .iter()
        .flat_map(|v| v.backends.iter().map(move |b| (v, b)))
        .filter_map(|(v, b)| {
            let id = *by_member.get(&(v.id(), b.address))?;
            let starts_down = v.check_for(b).is_some_and(|c| c.start == StartState::Down);
            is_down(id, starts_down, inp.health).then_some(id)
        })
        .collect();
    for (id, m) in members.iter_mut() {
        if down.contains(id) {
            m.value.state |= BACKEND_F_DOWN;
        }
    }

    // Rings: members with weight, not drained, healthy, not being removed.
    let seed = new.forwarding.hash_seed;
    let mut rings = BTreeMap::new();
    let mut vips = BTreeMap::new();
    let mut below_quorum = BTreeSet::new();
    for v in &new.vips {
        let Some(vip_id) = ids.vip_id(&v.id()) else {
            errs.push(format!("{}: no VIP id", v.id()));
            continue;
        };
        let size = new.ring_size(v);
        let member = |b: &BackendConfig, healthy_only: bool| {
            let id = *by_member.get(&(v.id(), b.address))?;
            // An unreachable backend takes nothing, not even as a fallback.
            if b.drain
                || b.weight == 0
                || unresolved.contains(&id)
                || (healthy_only && down.contains(&id))
            {
                return None;
            }
            Some(MaglevBackend {
                family: family_of(&b.address),
                addr: Addr::from(b.address),
                weight: b.weight,
                id,
            })
        };
        let mut weighted: Vec<MaglevBackend> =
            v.backends.iter().filter_map(|b| member(b, true)).collect();
        let mut keep = false;
        if let Some(q) = v.quorum
            && (weighted.len() as u32) < q
        {
            below_quorum.insert(v.id());
            match v.on_quorum_loss {
                QuorumLoss::KeepLast => keep = inp.published.rings.contains_key(&vip_id),
                // The routers stop sending; what still arrives goes to the healthy ones.
                QuorumLoss::Withdraw => {}
                QuorumLoss::Fallback => {
                    weighted = v
                        .backends
                        .iter()
                        .filter(|b| v.fallback.contains(&b.address))
                        .filter_map(|b| member(b, false))
                        .collect();
                }
            }
        }
        let mut key: Vec<(IpAddr, u32, u32)> = weighted
            .iter()
            .map(|b| (b.addr.to_ip(b.family), b.weight, b.id))
            .collect();
        key.sort();
        let inputs = RingInputs {
            size,
            seed,
            members: key,
        };
        let ring = if keep || inp.published.rings.get(&vip_id) == Some(&inputs) {
            RingPlan::Keep
        } else {
            match maglev::build(&weighted, size, seed) {
                Ok(t) => RingPlan::Build {
                    inputs,
                    table: Arc::new(t),
                },
                Err(e) => {
                    errs.push(format!("{}: {e}", v.id()));
                    continue;
                }
            }
        };
        rings.insert(vip_id, ring);
        vips.insert(
            v.id().key(),
            VipMeta {
                vip_id,
                ring_size: size,
                hash_mode: v.hash.code(),
                fwd_mode: v.forwarding.code(),
                flags: if v.conntrack { 0 } else { VIP_F_NO_CONNTRACK },
                idle_timeout_s: new.idle_timeout(v),
            },
        );
    }
    // Echo entries: one per address with a VIP that answers ping (echo has no port).
    for v in new.vips.iter().filter(|v| v.ping) {
        let Some(&vip_id) = vips.get(&v.id().key()).map(|m| &m.vip_id) else {
            continue;
        };
        let family = family_of(&v.address);
        let proto = if family == lb_common::FAMILY_V6 {
            lb_common::PROTO_ICMPV6
        } else {
            lb_common::PROTO_ICMP
        };
        vips.entry(VipKey {
            addr: Addr::from(v.address),
            port_be: 0,
            proto,
            family,
        })
        .or_insert(VipMeta {
            vip_id,
            flags: lb_common::VIP_F_PING,
            ..VipMeta::default()
        });
    }
    if !errs.is_empty() {
        return Err(PlanError(errs));
    }
    let mut config = lb_config(new, inp.nr_cpus);
    if inp.capture {
        config.flags |= lb_common::CFG_F_CAPTURE;
    }
    Ok(Plan {
        ids,
        removing,
        freed,
        draining,
        members,
        tx_ports,
        rings,
        vips,
        config,
        below_quorum,
        interfaces: new.interfaces.clone(),
    })
}
