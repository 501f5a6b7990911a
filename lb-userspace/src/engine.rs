//! The running state and how a desired configuration becomes map updates.
//!
//! `apply` plans everything that can fail (validation, ids, next hops, Maglev tables) before the
//! first write, then writes only what changed, in the order packets in flight need: backends
//! before the rings that name them, a ring before its VIP is published, VIPs unpublished before
//! their backends go down. The resulting desired state is persisted atomically.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use lb_common::{
    Addr, BACKEND_F_DOWN, Backend, LbConfig, MAX_BACKENDS, MAX_TX_PORTS, MAX_VIPS,
    VIP_F_NO_CONNTRACK, VipKey, VipMeta, family_of,
    maglev::{self, MaglevBackend},
    prog_names,
};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::{
    config::{Config, ConfigError, FwdMode, QuorumLoss, StartState, Vip, VipRef},
    dataplane::{AttachMode, Dataplane, DataplaneError, pin, vip_filter_words},
    health::{Target, avail::Health},
    nexthop::{NextHop, Resolver},
};

/// Persisted between daemon runs (JSON, replaced atomically).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Saved {
    pub version: u32,
    pub config: Config,
    /// Digest of the config file this state was last seeded from: a changed file wins over the
    /// saved state at the next start.
    #[serde(default)]
    pub seeded_from: Option<String>,
    pub ids: Ids,
    #[serde(default)]
    pub removing: Vec<Removing>,
    #[serde(default)]
    pub attached: Vec<AttachedIface>,
    /// Backend ids whose health check had them down: a restart keeps them out of the rings.
    #[serde(default)]
    pub down: Vec<u32>,
}

const SAVED_VERSION: u32 = 1;

/// Map ids of VIPs and of backends (one id per VIP membership, so drain, weight and health are
/// per service, as in ipvsadm).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ids {
    pub vips: Vec<(VipRef, u32)>,
    pub backends: Vec<(VipRef, IpAddr, u32)>,
    /// Next backend id to try: ids are handed out round-robin so a freed id is reused as late
    /// as possible (a stale conntrack entry then points at a down backend, not a new one).
    pub cursor: u32,
}

impl Ids {
    pub fn vip_id(&self, v: &VipRef) -> Option<u32> {
        self.vips.iter().find(|(r, _)| r == v).map(|(_, id)| *id)
    }
}

/// A backend removed without `--now`: out of the ring, still serving its tracked flows.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Removing {
    pub vip: VipRef,
    pub address: IpAddr,
    pub id: u32,
    pub since_unix_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AttachedIface {
    pub name: String,
    pub requested: AttachMode,
    pub mode: AttachMode,
}

/// What to do with backends that leave the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removal {
    /// Drain first: no new flows, tracked flows continue until idle or the drain timeout.
    Drain,
    /// Immediately: marked down, tracked flows are re-picked.
    Now,
}

#[derive(Debug)]
pub enum ApplyError {
    Invalid(ConfigError),
    /// Valid, but cannot be realised now (unresolvable next hop, daemon setting changed).
    Refused(Vec<String>),
    /// A map write failed; the previous state was restored where possible.
    Dataplane(String),
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApplyError::Invalid(e) => write!(f, "{e}"),
            ApplyError::Refused(errs) => {
                write!(f, "change refused, nothing applied:")?;
                for e in errs {
                    write!(f, "\n  - {e}")?;
                }
                Ok(())
            }
            ApplyError::Dataplane(e) => write!(f, "data plane update failed: {e}"),
        }
    }
}

impl From<DataplaneError> for ApplyError {
    fn from(e: DataplaneError) -> Self {
        ApplyError::Dataplane(e.to_string())
    }
}

/// What an apply changed (for the CLI and the logs).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApplyReport {
    pub vips_added: usize,
    pub vips_removed: usize,
    pub vips_changed: usize,
    pub backends_added: usize,
    pub backends_removed: usize,
    pub backends_draining: usize,
    pub rings_swapped: usize,
    pub map_writes: usize,
    pub elapsed_us: u64,
}

/// One backend as published in `BACKENDS`.
#[derive(Clone, Debug)]
pub struct Member {
    pub vip: VipRef,
    pub address: IpAddr,
    pub value: Backend,
    pub nexthop: Option<NextHop>,
    /// Next hop currently unresolvable: the backend is down until it resolves.
    pub unresolved: Option<String>,
}

pub struct Engine {
    pub dp: Dataplane,
    pub cfg: Config,
    pub ids: Ids,
    pub removing: Vec<Removing>,
    pub attached: Vec<AttachedIface>,
    /// Live contents of the maps this engine wrote.
    pub members: BTreeMap<u32, Member>,
    pub vip_meta: BTreeMap<VipKey, VipMeta>,
    /// What each published ring was built from (the rings themselves live only in the maps):
    /// a ring is rebuilt only when these change.
    pub rings: HashMap<u32, RingInputs>,
    /// Health of every probed or unprobed member (always up without a health check).
    pub health: HashMap<u32, Health>,
    pub health_transitions: u64,
    pub below_quorum: BTreeSet<VipRef>,
    pub quorum_losses: u64,
    tx_ports: BTreeMap<u32, u32>,
    resolver: Resolver,
    seeded_from: Option<String>,
    pub started: Instant,
    pub applies: u64,
    pub ring_rebuilds: u64,
    /// The running capture, if any (`xlb capture`).
    pub capture: Option<crate::capture::Lease>,
    /// The VIP address filter as written (empty: not written by this daemon yet).
    vip_filter: Vec<u32>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Engine {
    /// Advance the clock conntrack stamps flows with; housekeeping calls it every second.
    pub fn tick_clock(&mut self) {
        if let Err(e) = self
            .dp
            .set_clock(monotonic_coarse_ns() + lb_common::CLOCK_LEAD_NS)
        {
            warn!(error = %e, "writing the conntrack clock");
        }
    }
}

/// Give the allocator's free memory back to the system. An apply builds every changed ring at
/// once (256 KiB each at the default size), and glibc keeps such freed chunks in the heap, so
/// without this the daemon's RSS would stay at its peak after a large change.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap memory to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The outer-source mask: the low `bits` of an address in wire order.
fn low_bits_mask(bits: u8) -> u32 {
    let host = if bits == 0 {
        0
    } else {
        (u64::MAX >> (64 - bits as u32)) as u32
    };
    u32::from_ne_bytes(host.to_be_bytes())
}

pub fn lb_config(cfg: &Config) -> LbConfig {
    let f = &cfg.forwarding;
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
        // VIP_FILTER is always kept populated (see `execute`); the flag only says to use it.
        flags: if f.vip_address_filter {
            lb_common::CFG_F_VIP_FILTER
        } else {
            0
        } | if cfg.vips.iter().any(|v| v.port == 0) {
            lb_common::CFG_F_WILDCARD_VIPS
        } else {
            0
        },
        nr_cpus: aya::util::nr_cpus().map(|n| n as u16).unwrap_or(0),
    }
}

pub fn vip_key(v: &VipRef) -> VipKey {
    VipKey {
        addr: Addr::from(v.address),
        port_be: v.port.to_be(),
        proto: v.protocol.number(),
        family: family_of(&v.address),
    }
}

impl Engine {
    pub fn new(dp: Dataplane, daemon: crate::config::DaemonConfig) -> std::io::Result<Engine> {
        Ok(Engine {
            dp,
            cfg: Config {
                daemon,
                ..Config::default()
            },
            ids: Ids::default(),
            removing: Vec::new(),
            attached: Vec::new(),
            members: BTreeMap::new(),
            vip_meta: BTreeMap::new(),
            rings: HashMap::new(),
            health: HashMap::new(),
            health_transitions: 0,
            below_quorum: BTreeSet::new(),
            quorum_losses: 0,
            tx_ports: BTreeMap::new(),
            resolver: Resolver::new()?,
            seeded_from: None,
            started: Instant::now(),
            applies: 0,
            ring_rebuilds: 0,
            capture: None,
            vip_filter: Vec::new(),
        })
    }

    /// Take over ids and pending removals from a saved state before the first apply, so a
    /// restarted daemon writes exactly the values its predecessor left in the pinned maps.
    pub fn restore(&mut self, saved: &Saved) {
        self.ids = saved.ids.clone();
        self.removing = saved.removing.clone();
        self.attached = saved.attached.clone();
        for id in &saved.down {
            self.health
                .insert(*id, Health::new(false, "down before the restart"));
        }
        self.seeded_from = saved.seeded_from.clone();
    }

    pub fn set_seeded_from(&mut self, digest: Option<String>) {
        self.seeded_from = digest;
    }

    fn vip_id(&self, v: &VipRef) -> Option<u32> {
        self.ids.vip_id(v)
    }

    fn backend_id(&self, v: &VipRef, a: &IpAddr) -> Option<u32> {
        self.ids
            .backends
            .iter()
            .find(|(r, b, _)| r == v && b == a)
            .map(|(_, _, id)| *id)
    }

    /// Apply a complete desired configuration.
    pub async fn apply(
        &mut self,
        new: Config,
        removal: Removal,
    ) -> Result<ApplyReport, ApplyError> {
        let t0 = Instant::now();
        new.validate().map_err(ApplyError::Invalid)?;
        // The first apply after a start runs before housekeeping does.
        self.tick_clock();
        if new.daemon != self.cfg.daemon {
            return Err(ApplyError::Refused(vec![
                "the [daemon] section differs from the running daemon's; it only changes with a restart"
                    .into(),
            ]));
        }
        let old = (
            self.cfg.clone(),
            self.ids.clone(),
            self.removing.clone(),
            self.members.clone(),
        );
        let plan = self.plan(&new, removal).await?;
        match self.execute(&new, plan).await {
            Ok(mut report) => {
                self.cfg = new;
                self.applies += 1;
                release_freed_memory();
                report.elapsed_us = t0.elapsed().as_micros() as u64;
                Ok(report)
            }
            Err(e) => {
                // Put back what was there: the old plan re-applies the old values.
                warn!(error = %e, "apply failed midway, restoring the previous state");
                (self.cfg, self.ids, self.removing, self.members) = old;
                let cfg = self.cfg.clone();
                if let Ok(p) = self.plan(&cfg, Removal::Now).await {
                    let _ = self.execute(&cfg, p).await;
                }
                Err(e)
            }
        }
    }

    /// Everything that can fail, before any write.
    async fn plan(&mut self, new: &Config, removal: Removal) -> Result<Plan, ApplyError> {
        let mut ids = self.ids.clone();
        let mut removing = self.removing.clone();
        let mut errs = Vec::new();
        let new_vips: BTreeSet<VipRef> = new.vips.iter().map(Vip::id).collect();

        // VIP ids: keep, free, allocate.
        ids.vips.retain(|(r, _)| new_vips.contains(r));
        let mut used: BTreeSet<u32> = ids.vips.iter().map(|(_, id)| *id).collect();
        let have: BTreeSet<VipRef> = ids.vips.iter().map(|(r, _)| *r).collect();
        for v in &new.vips {
            if !have.contains(&v.id()) {
                match (0..MAX_VIPS).find(|i| !used.contains(i)) {
                    Some(id) => {
                        used.insert(id);
                        ids.vips.push((v.id(), id));
                    }
                    None => errs.push(format!("{}: no free VIP id", v.id())),
                }
            }
        }

        // Backends that leave: drained first (if their VIP stays) or dropped now.
        let wanted: BTreeSet<(VipRef, IpAddr)> = new
            .vips
            .iter()
            .flat_map(|v| v.backends.iter().map(move |b| (v.id(), b.address)))
            .collect();
        let mut freed = BTreeSet::new();
        let mut draining = 0;
        for (vip, addr, id) in &ids.backends {
            if wanted.contains(&(*vip, *addr)) {
                continue;
            }
            let already = removing.iter().any(|r| r.id == *id);
            if removal == Removal::Drain && new_vips.contains(vip) {
                if !already {
                    removing.push(Removing {
                        vip: *vip,
                        address: *addr,
                        id: *id,
                        since_unix_ms: unix_ms(),
                    });
                    draining += 1;
                }
            } else {
                freed.insert(*id);
            }
        }
        // A backend added back while draining is simply kept.
        removing.retain(|r| !wanted.contains(&(r.vip, r.address)) && !freed.contains(&r.id));
        ids.backends.retain(|(_, _, id)| !freed.contains(id));
        let mut used: BTreeSet<u32> = ids.backends.iter().map(|(_, _, id)| *id).collect();
        let have: BTreeSet<(VipRef, IpAddr)> =
            ids.backends.iter().map(|(v, a, _)| (*v, *a)).collect();
        for v in &new.vips {
            for b in &v.backends {
                if have.contains(&(v.id(), b.address)) {
                    continue;
                }
                let n = MAX_BACKENDS - 1;
                let found = (0..n)
                    .map(|k| (ids.cursor + k) % n + 1)
                    .find(|id| !used.contains(id) && !freed.contains(id));
                match found {
                    Some(id) => {
                        ids.cursor = id % n;
                        used.insert(id);
                        ids.backends.push((v.id(), b.address, id));
                    }
                    None => errs.push(format!("{}: no free backend id", v.id())),
                }
            }
        }

        // Next hops for every backend (cached unless the address or mode changed).
        let vip_cfg: HashMap<VipRef, &Vip> = new.vips.iter().map(|v| (v.id(), v)).collect();
        let old_fwd: HashMap<VipRef, FwdMode> = self
            .cfg
            .vips
            .iter()
            .map(|v| (v.id(), v.forwarding))
            .collect();
        let mut members = BTreeMap::new();
        let mut to_resolve = Vec::new();
        for (vip, addr, id) in &ids.backends {
            let Some(v) = vip_cfg.get(vip) else { continue };
            let on_link = v.forwarding == FwdMode::L2;
            let known = self
                .members
                .get(id)
                .filter(|m| m.address == *addr && m.unresolved.is_none())
                .filter(|_| old_fwd.get(vip) == Some(&v.forwarding))
                .and_then(|m| m.nexthop.clone());
            if known.is_none() {
                to_resolve.push((*id, *vip, *addr, on_link));
            }
            members.insert(
                *id,
                Member {
                    vip: *vip,
                    address: *addr,
                    value: Backend::default(),
                    nexthop: known,
                    unresolved: None,
                },
            );
        }
        let asked: Vec<(IpAddr, bool)> = to_resolve.iter().map(|t| (t.2, t.3)).collect();
        let answers = self.resolver.resolve_all(&asked).await;
        for ((id, vip, addr, _), answer) in to_resolve.iter().zip(answers) {
            match answer {
                Ok(nh) => members.get_mut(id).expect("inserted above").nexthop = Some(nh),
                Err(e) => errs.push(format!("{vip} backend {addr}: {e}")),
            }
        }
        if !errs.is_empty() {
            return Err(ApplyError::Refused(errs));
        }

        // Egress ports: XDP_TX when the next hop is out of the only attached interface.
        let single_ingress: Option<u32> = if new.interfaces.len() == 1 {
            ifindex(&new.interfaces[0].name)
        } else {
            None
        };
        let mut tx_ports = self.tx_ports.clone();
        for m in members.values_mut() {
            let nh = m.nexthop.as_ref().expect("resolved above");
            let tx_port = if Some(nh.ifindex) == single_ingress {
                0
            } else {
                let next = (1..MAX_TX_PORTS).find(|s| !tx_ports.values().any(|v| v == s));
                match tx_ports.get(&nh.ifindex) {
                    Some(s) => *s,
                    None => match next {
                        Some(s) => {
                            tx_ports.insert(nh.ifindex, s);
                            s
                        }
                        None => {
                            errs.push(format!("more than {} egress interfaces", MAX_TX_PORTS - 1));
                            0
                        }
                    },
                }
            };
            let vip_id = ids.vip_id(&m.vip);
            m.value = Backend {
                addr: Addr::from(m.address),
                dst_mac: nh.dst_mac,
                src_mac: if tx_port == 0 { [0; 6] } else { nh.src_mac },
                tx_port,
                family: family_of(&m.address),
                state: 0,
                // Every member's VIP has an id by now; 0 (unchecked) only if that ever broke.
                vip: vip_id.map_or(0, Backend::vip_tag),
            };
        }

        // Health: the recorded state, or the check's start state for a new member.
        let all_ids = ids_map(&ids);
        let down: BTreeSet<u32> = new
            .vips
            .iter()
            .flat_map(|v| v.backends.iter().map(move |b| (v, b)))
            .filter_map(|(v, b)| {
                let id = *all_ids.get(&(v.id(), b.address))?;
                let is_down = match self.health.get(&id) {
                    Some(h) => !h.up,
                    None => v.check_for(b).is_some_and(|c| c.start == StartState::Down),
                };
                is_down.then_some(id)
            })
            .collect();
        for (id, m) in members.iter_mut() {
            if down.contains(id) {
                m.value.state |= BACKEND_F_DOWN;
            }
        }

        // Rings: members with weight, not drained, healthy, not being removed.
        let id_of: HashMap<(VipRef, IpAddr), u32> = ids
            .backends
            .iter()
            .map(|(v, a, id)| ((*v, *a), *id))
            .collect();
        let mut rings = HashMap::new();
        let mut metas = BTreeMap::new();
        let mut below_quorum = BTreeSet::new();
        for v in &new.vips {
            let vip_id = ids.vip_id(&v.id()).expect("allocated above");
            let m = new.ring_size(v);
            let member = |b: &crate::config::BackendConfig, healthy_only: bool| {
                let id = *id_of.get(&(v.id(), b.address))?;
                if b.drain || b.weight == 0 || (healthy_only && down.contains(&id)) {
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
                    QuorumLoss::KeepLast => keep = self.rings.contains_key(&vip_id),
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
                size: m,
                seed: new.forwarding.hash_seed,
                members: key,
            };
            let table = if keep || self.rings.get(&vip_id) == Some(&inputs) {
                None
            } else {
                if weighted.is_empty() && !v.backends.is_empty() {
                    warn!(vip = %v.id(), "no healthy, undrained backend: the VIP's packets are dropped (drop_no_backend)");
                }
                Some((
                    maglev::build(&weighted, m, new.forwarding.hash_seed)
                        .map_err(|e| ApplyError::Refused(vec![format!("{}: {e}", v.id())]))?,
                    inputs,
                ))
            };
            rings.insert(vip_id, table);
            metas.insert(
                vip_key(&v.id()),
                VipMeta {
                    vip_id,
                    ring_size: m,
                    hash_mode: v.hash.code(),
                    fwd_mode: v.forwarding.code(),
                    flags: if v.conntrack { 0 } else { VIP_F_NO_CONNTRACK },
                },
            );
        }
        if !errs.is_empty() {
            return Err(ApplyError::Refused(errs));
        }
        Ok(Plan {
            below_quorum,
            ids,
            removing,
            members,
            rings,
            metas,
            tx_ports,
            freed,
            draining,
        })
    }

    async fn execute(&mut self, new: &Config, plan: Plan) -> Result<ApplyReport, ApplyError> {
        let mut r = ApplyReport {
            backends_draining: plan.draining,
            ..ApplyReport::default()
        };
        // The address filter holds old and new VIPs while both may be published, and must before
        // the config that switches it on is written.
        let both = vip_filter_words(
            self.vip_meta
                .keys()
                .chain(plan.metas.keys())
                .map(|k| &k.addr),
        );
        r.map_writes += self.dp.set_vip_filter(&both, &self.vip_filter)?;
        self.vip_filter = both;
        let want_cfg = self.live_config(new);
        let had_cfg = self.live_config(&self.cfg);
        if want_cfg != had_cfg || self.applies == 0 {
            self.dp.set_config(&want_cfg)?;
            r.map_writes += 1;
        }
        for (ifidx, slot) in &plan.tx_ports {
            if self.tx_ports.get(ifidx) != Some(slot) {
                self.dp.set_tx_port(*slot, *ifidx)?;
                r.map_writes += 1;
            }
        }
        self.tx_ports = plan.tx_ports.clone();
        for (id, m) in &plan.members {
            let same = self.members.get(id).map(|o| o.value) == Some(m.value);
            if !same || self.applies == 0 {
                self.dp.set_backend(*id, &m.value)?;
                r.map_writes += 1;
                if !self.members.contains_key(id) {
                    r.backends_added += 1;
                }
            }
        }
        for (vip_id, table) in &plan.rings {
            if let Some((t, inputs)) = table {
                self.dp.set_ring(*vip_id, t)?;
                self.rings.insert(*vip_id, inputs.clone());
                r.rings_swapped += 1;
                r.map_writes += 1;
                self.ring_rebuilds += 1;
            }
        }
        for (k, meta) in &plan.metas {
            match self.vip_meta.get(k) {
                Some(old) if old == meta && self.applies > 0 => {}
                Some(_) => {
                    self.dp.set_vip(k, meta)?;
                    r.vips_changed += 1;
                    r.map_writes += 1;
                }
                None => {
                    self.dp.set_vip(k, meta)?;
                    r.vips_added += 1;
                    r.map_writes += 1;
                }
            }
        }
        let gone: Vec<VipKey> = self
            .vip_meta
            .keys()
            .filter(|k| !plan.metas.contains_key(k))
            .copied()
            .collect();
        for k in &gone {
            let id = self.vip_meta[k].vip_id;
            self.dp.remove_vip(k)?;
            if !plan.rings.contains_key(&id) {
                self.rings.remove(&id);
            }
            r.vips_removed += 1;
            r.map_writes += 1;
        }
        let only_new = vip_filter_words(plan.metas.keys().map(|k| &k.addr));
        r.map_writes += self.dp.set_vip_filter(&only_new, &self.vip_filter)?;
        self.vip_filter = only_new;
        // Only now, with no ring or VIP naming them, backends go down.
        for id in &plan.freed {
            self.dp.set_backend(
                *id,
                &Backend {
                    state: BACKEND_F_DOWN,
                    ..Backend::default()
                },
            )?;
            r.backends_removed += 1;
            r.map_writes += 1;
        }
        for v in plan.below_quorum.difference(&self.below_quorum) {
            let policy = self.cfg.vip(v).or(new.vip(v)).map(|x| x.on_quorum_loss);
            warn!(vip = %v, ?policy, "fewer healthy backends than the quorum");
            self.quorum_losses += 1;
        }
        for v in self.below_quorum.difference(&plan.below_quorum) {
            info!(vip = %v, "quorum of healthy backends restored");
        }
        self.below_quorum = plan.below_quorum;
        self.vip_meta = plan.metas;
        self.members = plan.members;
        let members = &self.members;
        self.health.retain(|id, _| members.contains_key(id));
        for (id, m) in &self.members {
            self.health
                .entry(*id)
                .or_insert_with(|| Health::new(m.value.state & BACKEND_F_DOWN == 0, "start state"));
        }
        self.ids = plan.ids;
        self.removing = plan.removing;
        self.sync_interfaces(new)?;
        self.save_with(new).map_err(ApplyError::Dataplane)?;
        Ok(r)
    }

    /// Attach to configured interfaces that lack the forwarder, detach from dropped ones.
    fn sync_interfaces(&mut self, new: &Config) -> Result<(), ApplyError> {
        let dir = new.daemon.pin_dir.clone();
        let held = self.dp.attached();
        for iface in &new.interfaces {
            let known = self.attached.iter().find(|a| a.name == iface.name).cloned();
            if held.contains(&iface.name)
                && known.as_ref().is_some_and(|a| a.requested == iface.mode)
            {
                continue;
            }
            let path = pin::link_path(&dir, &iface.name);
            let a = self
                .dp
                .attach(prog_names::FORWARD, &iface.name, iface.mode, Some(&path))?;
            if a.fell_back {
                warn!(
                    iface = %iface.name,
                    "FALLBACK: the driver refused native XDP; the forwarder runs in generic mode, at a fraction of native speed"
                );
            }
            info!(iface = %iface.name, mode = ?a.mode, replaced = a.replaced, "forwarder attached");
            let mode = if a.replaced {
                known.map(|k| k.mode).unwrap_or(a.mode)
            } else {
                a.mode
            };
            self.attached.retain(|x| x.name != iface.name);
            self.attached.push(AttachedIface {
                name: iface.name.clone(),
                requested: iface.mode,
                mode,
            });
        }
        let gone: Vec<String> = self
            .attached
            .iter()
            .filter(|a| !new.interfaces.iter().any(|i| i.name == a.name))
            .map(|a| a.name.clone())
            .collect();
        for name in gone {
            self.dp.detach(&name, Some(&pin::link_path(&dir, &name)))?;
            self.attached.retain(|a| a.name != name);
            info!(iface = %name, "forwarder detached");
        }
        Ok(())
    }

    fn save_with(&self, cfg: &Config) -> Result<(), String> {
        let saved = Saved {
            version: SAVED_VERSION,
            config: cfg.clone(),
            seeded_from: self.seeded_from.clone(),
            ids: self.ids.clone(),
            removing: self.removing.clone(),
            attached: self.attached.clone(),
            down: self
                .health
                .iter()
                .filter(|(_, h)| !h.up)
                .map(|(id, _)| *id)
                .collect(),
        };
        let text = serde_json::to_vec_pretty(&saved).map_err(|e| e.to_string())?;
        write_atomic(&cfg.daemon.state_file, &text)
            .map_err(|e| format!("saving state to {}: {e}", cfg.daemon.state_file.display()))
    }

    /// Finish removals whose backends have no recently active tracked flow, or whose drain
    /// timed out. Returns how many finished.
    pub fn reap_removals(&mut self) -> Result<usize, DataplaneError> {
        if self.removing.is_empty() {
            return Ok(0);
        }
        let d = &self.cfg.daemon;
        let now_ms = unix_ms();
        let idle = Duration::from_secs(d.drain_idle_secs as u64);
        let active = self.active_backends(idle)?;
        // Flows are stamped from the clock this daemon writes: stamps made while no daemon ran
        // are stale, so idleness means nothing until the clock has ticked for `idle`.
        let trust_idle = self.started.elapsed() >= idle;
        let mut done = Vec::new();
        for r in &self.removing {
            let age = now_ms.saturating_sub(r.since_unix_ms);
            let idle_out = trust_idle && !active.contains(&r.id);
            if idle_out || age >= d.drain_timeout_secs as u64 * 1000 {
                done.push(r.id);
            }
        }
        for id in &done {
            self.dp.set_backend(
                *id,
                &Backend {
                    state: BACKEND_F_DOWN,
                    ..Backend::default()
                },
            )?;
            self.members.remove(id);
            if let Some(r) = self.removing.iter().find(|r| r.id == *id) {
                info!(vip = %r.vip, backend = %r.address, "drained backend removed");
            }
        }
        self.removing.retain(|r| !done.contains(&r.id));
        self.ids.backends.retain(|(_, _, id)| !done.contains(id));
        if !done.is_empty()
            && let Err(e) = self.save_with(&self.cfg)
        {
            warn!(error = %e, "saving state");
        }
        Ok(done.len())
    }

    /// Backend ids with a tracked flow seen within `idle`.
    pub fn active_backends(&self, idle: Duration) -> Result<BTreeSet<u32>, DataplaneError> {
        let now = monotonic_coarse_ns();
        let horizon = idle.as_nanos() as u64;
        let mut out = BTreeSet::new();
        for (_, states) in self.dp.flows()? {
            for s in states {
                if now.saturating_sub(s.last_seen_ns) <= horizon {
                    out.insert(s.backend_id);
                }
            }
        }
        Ok(out)
    }

    /// Re-resolve every next hop; rewrite backends whose MACs changed. A next hop that stops
    /// resolving keeps its last known MAC (a neighbour entry can expire while the host is fine)
    /// and is reported as unresolved.
    pub async fn refresh_nexthops(&mut self) -> usize {
        let ids: Vec<u32> = self.members.keys().copied().collect();
        let asked: Vec<(IpAddr, bool)> = ids
            .iter()
            .map(|id| {
                let m = &self.members[id];
                let l2 = self
                    .cfg
                    .vip(&m.vip)
                    .is_some_and(|v| v.forwarding == FwdMode::L2);
                (m.address, l2)
            })
            .collect();
        let answers = self.resolver.resolve_all(&asked).await;
        let mut changed = 0;
        for (id, answer) in ids.iter().zip(answers) {
            let Some(m) = self.members.get_mut(id) else {
                continue;
            };
            match answer {
                Ok(nh) => {
                    let mut value = m.value;
                    value.dst_mac = nh.dst_mac;
                    if value.tx_port != 0 {
                        value.src_mac = nh.src_mac;
                    }
                    if m.unresolved.take().is_some() {
                        info!(backend = %m.address, vip = %m.vip, "next hop resolves again");
                    }
                    m.nexthop = Some(nh);
                    if value != m.value {
                        if let Err(e) = self.dp.set_backend(*id, &value) {
                            warn!(backend = %m.address, error = %e, "rewriting backend");
                            continue;
                        }
                        info!(backend = %m.address, vip = %m.vip, "next hop changed, backend rewritten");
                        m.value = value;
                        changed += 1;
                    }
                }
                Err(e) => {
                    if m.unresolved.is_none() {
                        warn!(backend = %m.address, vip = %m.vip, error = %e, "next hop lost; keeping the last known MAC");
                    }
                    m.unresolved = Some(e);
                }
            }
        }
        changed
    }

    /// Remove map entries the saved state does not account for (a crash between a map write
    /// and the state save leaves such orphans).
    pub fn sweep_orphans(&mut self) -> Result<usize, DataplaneError> {
        let mut n = 0;
        for (k, _) in self.dp.vips()? {
            if !self.vip_meta.contains_key(&k) {
                self.dp.remove_vip(&k)?;
                n += 1;
            }
        }
        let live: BTreeSet<u32> = self.members.keys().copied().collect();
        for (id, b) in self.dp.backends()? {
            if !live.contains(&id) && b != Backend::default() && !b.is_down() {
                self.dp.set_backend(
                    id,
                    &Backend {
                        state: BACKEND_F_DOWN,
                        ..Backend::default()
                    },
                )?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Record a health transition of backend `id` and apply it: a backend going down leaves
    /// its VIP's ring (only its slots move) and is marked down, so its tracked flows are
    /// re-picked; one coming back is re-added. Returns whether anything changed.
    pub async fn set_health(
        &mut self,
        id: u32,
        up: bool,
        reason: &str,
    ) -> Result<bool, ApplyError> {
        let Some(h) = self.health.get_mut(&id) else {
            return Ok(false);
        };
        if !h.set(up, reason, Instant::now()) {
            return Ok(false);
        }
        self.health_transitions += 1;
        let cfg = self.cfg.clone();
        self.apply(cfg, Removal::Drain).await?;
        Ok(true)
    }

    /// What the health monitor should probe: every member of a VIP with a health check.
    pub fn probe_targets(&self) -> HashMap<u32, Target> {
        let ids = ids_map(&self.ids);
        let mut out = HashMap::new();
        for v in &self.cfg.vips {
            for b in &v.backends {
                let (Some(check), Some(id)) = (v.check_for(b), ids.get(&(v.id(), b.address)))
                else {
                    continue;
                };
                out.insert(
                    *id,
                    Target {
                        addr: std::net::SocketAddr::new(b.address, check.port.unwrap_or(v.port)),
                        check: check.clone(),
                    },
                );
            }
        }
        out
    }

    pub fn backend_id_of(&self, v: &VipRef, a: &IpAddr) -> Option<u32> {
        self.backend_id(v, a)
    }

    pub fn vip_id_of(&self, v: &VipRef) -> Option<u32> {
        self.vip_id(v)
    }

    pub fn state_path(&self) -> &Path {
        &self.cfg.daemon.state_file
    }
}

/// The inputs of one published ring: same inputs, same table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingInputs {
    pub size: u32,
    pub seed: u32,
    /// (address, weight, id) of the members in the ring, sorted.
    pub members: Vec<(IpAddr, u32, u32)>,
}

fn ids_map(ids: &Ids) -> HashMap<(VipRef, IpAddr), u32> {
    ids.backends
        .iter()
        .map(|(v, a, id)| ((*v, *a), *id))
        .collect()
}

struct Plan {
    /// VIPs with fewer healthy backends than their quorum.
    below_quorum: BTreeSet<VipRef>,
    ids: Ids,
    removing: Vec<Removing>,
    members: BTreeMap<u32, Member>,
    /// `None`: the published ring stays.
    rings: HashMap<u32, Option<(Vec<u32>, RingInputs)>>,
    metas: BTreeMap<VipKey, VipMeta>,
    tx_ports: BTreeMap<u32, u32>,
    freed: BTreeSet<u32>,
    draining: usize,
}

fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated string; the call only reads it.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// `CLOCK_MONOTONIC_COARSE`, the clock of `bpf_ktime_get_coarse_ns`.
pub fn monotonic_coarse_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Write `data` to `path` so a reader (or a crash) sees the old file or the new, never a mix.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp: PathBuf = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state")
    ));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Load a saved state, if any.
pub fn load_saved(path: &Path) -> Result<Option<Saved>, String> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let s: Saved = serde_json::from_slice(&bytes)
                .map_err(|e| format!("state file {}: {e}", path.display()))?;
            if s.version != SAVED_VERSION {
                return Err(format!(
                    "state file {} has version {}, this build reads {SAVED_VERSION}",
                    path.display(),
                    s.version
                ));
            }
            Ok(Some(s))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("reading state file {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wildcard_flag_follows_port_zero_vips() {
        let mut c = Config::default();
        c.vips
            .push(Vip::new("10.0.0.1:80/tcp".parse().expect("vip")));
        assert_eq!(lb_config(&c).flags & lb_common::CFG_F_WILDCARD_VIPS, 0);
        c.vips
            .push(Vip::new("10.0.0.2:0/udp".parse().expect("vip")));
        assert_ne!(lb_config(&c).flags & lb_common::CFG_F_WILDCARD_VIPS, 0);
    }

    #[test]
    fn outer_source_masks_are_low_bits_in_wire_order() {
        assert_eq!(low_bits_mask(0), 0);
        assert_eq!(low_bits_mask(8).to_ne_bytes(), [0, 0, 0, 0xff]);
        assert_eq!(low_bits_mask(16).to_ne_bytes(), [0, 0, 0xff, 0xff]);
    }
}
